"""``cnnx check-layer TARGET``: check one layer type, a user's included, with :mod:`cnnx.layercheck`:
finite differences against its backward, float32 against float64, saving and loading, a dtype move, its
random streams, the strict backend and, where a GPU is usable, CPU against GPU. A table of the checks;
exit status 1 when any failed."""

from __future__ import annotations

import click

from cnnx.fileio import echo

from .options import import_option


@click.command("check-layer", short_help="Check a layer's gradients, dtypes, saving, streams and devices.")
@click.argument("target", metavar="TARGET")
@click.option(
    "--config",
    "config",
    default=None,
    metavar="JSON",
    help="The layer's constructor arguments as a JSON object, e.g. "
    '\'{"in_features": 6, "out_features": 4}\' (default: the layer\'s example).',
)
@click.option(
    "--input-shape",
    default=None,
    metavar="SHAPE",
    help="One sample's input shape, sizes separated by commas, e.g. 3,8,8 (default: the layer's example).",
)
@import_option()
def check_layer(target, config, input_shape):
    """Check the layer TARGET: a registered type name (Dense), MODULE:CLASS or path/to/file.py:CLASS.
    Every built-in type has a small example; a layer of your own gives one with a classmethod example()
    returning (config, input_shape), or takes --config and --input-shape."""
    from cnnx.layercheck import check_layer as run_checks

    report = run_checks(target, config, input_shape)
    echo(report.table())
    if not report.ok:
        raise SystemExit(1)

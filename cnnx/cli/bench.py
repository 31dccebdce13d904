"""``cnnx bench``: the command over :mod:`cnnx.bench` (training and inference speed, against PyTorch)."""

from __future__ import annotations

import json

import click

from cnnx.bench.benchmark import (
    COMPARE,
    DTYPES,
    format_profile,
    format_report,
    parse_batch_sizes,
    profile_layers,
    run_benchmark,
)

from .options import device_option, model_option


@click.command("bench")
@device_option()
@model_option()
@click.option(
    "--batch-size",
    "batch_sizes",
    multiple=True,
    default=("128",),
    show_default=True,
    help="Images per step; repeat the option or give a comma list (128,512).",
)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per run.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps before each run.")
@click.option(
    "--repeats",
    type=int,
    default=3,
    show_default=True,
    help="Runs per framework and mode; the report gives medians.",
)
@click.option(
    "--compare",
    type=click.Choice(COMPARE),
    default=None,
    help="Also time the same model in PyTorch (if installed), alternating runs.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also time each layer's forward and backward and the optimizer (cnnx only; best of --repeats runs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(device, model_name, batch_sizes, dtype, steps, warmup, repeats, compare, profile, as_json) -> None:
    """Training and inference throughput of a model preset on synthetic data, optionally against PyTorch.

    Seconds per epoch are extrapolated to 60,000 images from the timed steps.
    """
    sizes = parse_batch_sizes(batch_sizes)
    result = run_benchmark(
        model_name,
        sizes,
        device=device,
        dtype=dtype,
        steps=steps,
        warmup=warmup,
        repeats=repeats,
        compare=compare,
    )
    if profile:
        result["profile"] = [
            profile_layers(
                model_name, size, device=device, dtype=dtype, steps=steps, warmup=warmup, repeats=repeats
            )
            for size in sizes
        ]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_report(result))
    for table in result.get("profile", []):
        click.echo("\n" + format_profile(table))

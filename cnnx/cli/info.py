"""``cnnx info``: versions, usable backends (and why not), and where the data set is."""

from __future__ import annotations

import platform
from pathlib import Path

import click


@click.command(short_help="Versions, usable backends and where the dataset is.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also check this directory for the dataset.",
)
def info(data_dir):
    """Versions, which backends are usable here (or why not), and where the dataset is."""
    from cnnx.backends import available_backends, get_backend
    from cnnx.data import candidate_dirs, find_dataset
    from cnnx.training.records import versions

    v = versions()
    click.echo(
        f"cnnx {v['cnnx']}  python {platform.python_version()}  numpy {v['numpy']}  "
        f"cupy {v['cupy'] or 'not installed'}"
    )
    click.echo("backends:")
    for name, problem in available_backends().items():
        click.echo(
            f"  {name}: "
            + (f"usable, {get_backend(name).describe()}" if problem is None else f"unavailable: {problem}")
        )
    click.echo("dataset:")
    found = find_dataset(data_dir)
    for label, directory in candidate_dirs(data_dir):
        here = find_dataset(directory)
        state = f"found ({here[1]})" if here else "no complete dataset"
        click.echo(f"  {label} {directory}: {state}")
    if found:
        click.echo(f"  cnnx train uses {found[0]}")
    elif data_dir is None:
        click.echo("  not found: cnnx train would download it into the user cache")
    else:
        click.echo("  not found in --data-dir")

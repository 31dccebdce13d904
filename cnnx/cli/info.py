"""``cnnx info``: versions, usable backends (and why not), and where the data set is.

Where the data set is comes from the loader's own search (:func:`cnnx.data.search` and
:func:`cnnx.data.image_folder`), so what ``info`` says ``cnnx train`` would do is what it does.
"""

from __future__ import annotations

import platform
from pathlib import Path

import click

from cnnx.checks import plural
from cnnx.data.sources import IDX_DATASETS


@click.command(short_help="Versions, usable backends and where the dataset is.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Say what this directory holds, as cnnx train --data-dir would read it.",
)
@click.option(
    "--dataset",
    type=click.Choice(IDX_DATASETS),
    default="fashion-mnist",
    show_default=True,
    help="The data set to look for.",
)
def info(data_dir, dataset):
    """Versions, which backends are usable here (or why not), and where the dataset is."""
    from cnnx.backends import available_backends, get_backend
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
    from cnnx.backends.mpi import describe_mpi, mpi_problem

    problem = mpi_problem()
    click.echo("mpi (one model on several processes: mpiexec -n N):")
    click.echo(f"  {'usable, ' + describe_mpi() if problem is None else 'unavailable: ' + problem}")
    click.echo("onnx (cnnx export, cnnx import):")
    click.echo(f"  {_onnx_line()}")
    click.echo(f"dataset ({dataset}):")
    for line in dataset_lines(dataset, data_dir):
        click.echo(f"  {line}")


def _onnx_line() -> str:
    """The onnx package's version, read from its metadata (importing it takes a second), or how to get it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"usable, onnx {version('onnx')}"
    except PackageNotFoundError:
        return "unavailable: the onnx package is not installed (pip install 'cnnx[onnx]')"


def dataset_lines(name: str, data_dir) -> list[str]:
    """What each place searched holds, and what ``cnnx train`` would do: use one (having loaded it, so
    a folder it would refuse is refused here too), stop with the message it would stop with, or
    download. An image folder is listed, not decoded."""
    from cnnx.data import cache_dir, idx_source, image_folder, load_dataset, scan_image_folder, search
    from cnnx.errors import CnnxError

    lines = []
    try:
        folder = image_folder(name, data_dir)
        if folder is not None:
            listed = scan_image_folder(folder)
            names = ", ".join(listed.class_names[:5]) + (", ..." if len(listed.class_names) > 5 else "")
            return [
                f"--data-dir {folder}: image folder, "
                f"{plural(len(listed.class_names), 'class', 'classes')} ({names}), "
                f"{listed.count('train'):,} train / {listed.count('test'):,} test pictures",
                f"cnnx train uses image folder {folder}: every picture prepared as cnnx predict prepares it",
            ]
        looked = search(data_dir, name)
        lines = [f"{label} {path}: {state}" for label, path, state in looked.states()]
        if looked.found:
            dataset = load_dataset(name, data_dir, quiet=True)  # found: nothing is downloaded
            return [*lines, f"cnnx train uses {dataset.source}: {len(dataset.train_images):,} train / "
                            f"{len(dataset.test_images):,} test images"]  # fmt: skip
        if looked.explicit:
            return [*lines, f"cnnx train would stop: {looked.not_there()}"]
    except CnnxError as exc:
        return [*lines, f"cnnx train would stop: {exc}"]
    where = f"{cache_dir(name)} from {idx_source(name).mirrors[0]}"
    return [*lines, f"not found: cnnx train would download it into {where}"]

"""``cnnx experiment list | run | report``: the experiment files of a study, their grid, and its report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from cnnx.backends import DEVICES
from cnnx.checks import plural
from cnnx.errors import CnnxError

from .options import data_dir_option

PROTOCOL_CHOICES = ("all", "modern", "report")


def _dir_option(function):
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("experiments"),
        show_default=True,
        help="The folder of experiment files (*.toml).",
    )(function)


def _results_option(function):
    return click.option(
        "--results",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where the runs write, one directory each (default: DIR/results). On a cluster, a folder "
        "every worker reaches at the same path.",
    )(function)


@click.group()
def experiment() -> None:
    """Run the original study (experiments/*.toml), or a grid of one's own, and report on it."""


@experiment.command("list")
@_dir_option
@_results_option
def list_experiments(directory: Path, results: Path | None) -> None:
    """Each experiment's runs and where they stand."""
    from cnnx.experiments import find_experiments
    from cnnx.experiments.grid import read_metrics, run_dir

    results = results or directory / "results"
    for item in find_experiments(directory):
        click.echo(f"{item.name}: {item.title}")
        for spec in item.runs:
            record = read_metrics(run_dir(results, spec))
            state = "not run" if record is None else record.get("status", "?")
            if record is not None and record.get("status") == "completed":
                state += f", test accuracy {record.get('test_accuracy', 0):.4f}"
            click.echo(f"  {spec.protocol:<6} {spec.label:<12} {state}")


@experiment.command("run")
@click.argument("names", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every experiment in DIR.")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOL_CHOICES),
    default="all",
    show_default=True,
    help='The report\'s protocol (optimizer steps as its "epochs"), the modern one (mini-batch epochs), '
    "or both.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at once on this machine, each a process of its own with an equal share of the cores.",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    default=None,
    help="Send the runs to the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786) instead; needs "
    "pip install 'cnnx[cluster]'.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per run (default: the cores divided by --jobs here; the worker's own setting on a "
    "cluster).",
)
@click.option("--force", is_flag=True, help="Run again even the runs that finished with the same settings.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train every run on a class-balanced subset of N images (a quick trial; recorded in each run).",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=None,
    help="Run every run on this device (default: each file's setting, cpu unless it says otherwise).",
)
@data_dir_option()
@_dir_option
@_results_option
def run(names, run_all, protocol, jobs, cluster, threads, force, limit, device, data_dir, directory, results):
    """Run the named experiments (or --all) and record each run in its own directory.

    Finished runs with the same settings are reused (--force runs them again); a run that stopped
    (a killed worker, Ctrl-C) resumes from its last checkpoint. A run that diverges is recorded as
    diverged at its step and the others carry on.
    """
    from cnnx.experiments import find_experiments, run_grid, select

    if bool(names) == run_all:
        raise click.UsageError("name the experiments to run, or give --all (not both)")
    experiments = find_experiments(directory)
    protocols = ("modern", "report") if protocol == "all" else (protocol,)
    specs = select(experiments, list(names), protocols)
    overrides = {
        k: v for k, v in (("limit", limit), ("device", device), ("data_dir", data_dir)) if v is not None
    }
    if "data_dir" in overrides:
        overrides["data_dir"] = str(Path(overrides["data_dir"]).resolve())
    if overrides:
        specs = [dataclasses.replace(spec, config=spec.config.replace(**overrides)) for spec in specs]
    summaries = run_grid(specs, results or directory / "results", jobs=jobs, cluster=cluster, force=force,
                         threads=threads, echo=click.echo)  # fmt: skip
    lost = [s for s in summaries if s["status"] not in ("completed", "diverged")]
    if lost:
        raise CnnxError(
            f"{len(lost)} of {plural(len(summaries), 'run')} did not finish "
            f"({', '.join(s['key'] for s in lost)}): "
            "run the same command again to resume them"
        )


@experiment.command("report")
@_dir_option
@_results_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The report to write (default: DIR/REPORT.md); its figures go next to it.",
)
def report(directory: Path, results: Path | None, out: Path | None) -> None:
    """Write REPORT.md and its figures from the recorded runs."""
    from cnnx.experiments import find_experiments, write_report

    path = write_report(
        find_experiments(directory), results or directory / "results", out or directory / "REPORT.md"
    )
    click.echo(f"wrote {path}")

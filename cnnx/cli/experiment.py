"""``cnnx experiment list | run | report``: the experiment files of a study, their grid, and its report."""

from __future__ import annotations

from pathlib import Path

import click

from cnnx.backends import DEVICES
from cnnx.checks import plural
from cnnx.errors import CnnxError, ConfigError
from cnnx.fileio import echo

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
    """Each experiment's runs and where they stand, with the trials (--limit) recorded for them."""
    from cnnx.experiments import find_experiments
    from cnnx.experiments.records import read_metrics
    from cnnx.experiments.spec import with_settings
    from cnnx.experiments.store import readable_dir, run_dir, staging_dir, trial_limits

    results = results or directory / "results"
    limits = trial_limits(results)
    for item in find_experiments(directory):
        echo(f"{item.name}: {item.title}")
        for spec in item.runs:
            final = run_dir(results, spec)
            record = read_metrics(readable_dir(final))
            state = "not run" if record is None else record.describe()
            if record is not None and record.limit:
                state += f" (a trial on {plural(record.limit, 'image')})"
            staged = read_metrics(staging_dir(final))
            if staged is not None:
                state += f"; a replacement beside it: {staged.describe()}"
            echo(f"  {spec.protocol:<6} {spec.label:<12} {state}")
            for limit in (n for n in limits if n != spec.config.limit):
                trial = read_metrics(readable_dir(run_dir(results, with_settings(spec, limit=limit))))
                if trial is not None:
                    echo(f"  {'':<6} {'':<12} trial --limit {limit}: {trial.describe()}")


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
    help="Train every run on a class-balanced subset of N images: a quick trial, kept apart from the full "
    "runs (in RESULTS/trials/limit-N) and reported with `experiment report --limit N`.",
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
    (a killed worker, Ctrl-C) resumes from its last checkpoint. A run that replaces another (--force,
    changed settings) trains beside it and takes its place only once it finished. A run that diverges
    is recorded as diverged at its step and the others carry on.
    """
    from cnnx.experiments import find_experiments, run_grid, select
    from cnnx.experiments.grid import unfinished
    from cnnx.experiments.spec import with_settings
    from cnnx.experiments.store import grid_root

    if bool(names) == run_all:
        raise click.UsageError("name the experiments to run, or give --all (not both)")
    experiments = find_experiments(directory)
    protocols = ("modern", "report") if protocol == "all" else (protocol,)
    overrides = {
        k: v for k, v in (("limit", limit), ("device", device), ("data_dir", data_dir)) if v is not None
    }
    if "data_dir" in overrides:  # relative to where the command runs, unlike a file's
        overrides["data_dir"] = str(Path(overrides["data_dir"]).resolve())
    specs = [with_settings(spec, **overrides) for spec in select(experiments, list(names), protocols)]
    results = results or directory / "results"
    if limit is not None:
        where = grid_root(results, limit)
        echo(f"a trial on {plural(limit, 'image')}: its runs go to {where}, apart from the full runs")
    summaries = run_grid(specs, results, jobs=jobs, cluster=cluster, force=force, threads=threads, echo=echo)
    problem = unfinished(summaries)
    if problem is not None:
        raise CnnxError(problem)


@experiment.command("report")
@_dir_option
@_results_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Report the trial that `experiment run --limit N` made (its runs are kept apart from the full "
    "runs).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The report to write; its figures go next to it. Default: DIR/REPORT.md when every run finished "
    "on the whole training set, else REPORT.md beside the runs (in the results folder, or the trial's).",
)
def report(directory: Path, results: Path | None, limit: int | None, out: Path | None) -> None:
    """Write REPORT.md and its figures from the recorded runs."""
    from cnnx.experiments import find_experiments, write_report
    from cnnx.experiments.report import NOT_RUN, collect, default_destination
    from cnnx.experiments.store import grid_root

    experiments = find_experiments(directory)
    results = results or directory / "results"
    rows = collect(experiments, results, limit)
    if all(row["status"] == NOT_RUN for row in rows):
        raise ConfigError(
            f"{grid_root(results, limit)}: no run of the experiments in {directory} has been recorded here: "
            "run them first (cnnx experiment run)"
        )
    reason = None
    if out is None:
        out, reason = default_destination(rows, directory, results, limit)
    path = write_report(experiments, results, out, limit=limit, rows=rows)
    echo(f"wrote {path}" + (f" ({reason})" if reason else ""))

"""``cnnx train``: a thin layer over :func:`cnnx.training.run_training`. Options (or a TOML file of the
same fields, ``--config``) make a RunConfig; ``--resume`` rebuilds the run's own."""

from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource

from cnnx.errors import ConfigError
from cnnx.fileio import echo
from cnnx.training.config import CHANGEABLE, RunConfig
from cnnx.training.settings import (
    Directory,
    Real,
    Setting,
    SettingError,
    Whole,
    default_of,
    doc_of,
    option_name,
)

from .options import import_option

# The run settings that are options (RunConfig's fields, declared with option=True), by click name.
FIELDS = tuple(field.name for field in RunConfig.declared() if field.metadata["option"])


def _listing(words) -> str:
    """ "a, b and c"."""
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


# The run file's keys (RunConfig's fields, the options' names with underscores and a few that are no
# option), and what --resume may extend and change (the options of RunConfig's CHANGEABLE fields).
CONFIG_HELP = (
    f"Read the run's settings from a TOML file whose keys ({', '.join(RunConfig.fields())}) are these "
    "options' names with underscores, and "
    + _listing(field for field in RunConfig.fields() if field not in FIELDS)
    + "; options given here override the file."
)
EXTENDING = ("epochs", "max_steps")
RESUME_HELP = (
    "Continue the run in RUN_DIR from its last checkpoint, with its recorded settings ("
    + _listing(option_name(field) for field in EXTENDING)
    + " may extend it; "
    + _listing(option_name(field) for field in CHANGEABLE if field not in EXTENDING)
    + " may change). A run killed after its last checkpoint is finished (evaluated, recorded, drawn); one "
    "killed before its first starts again from scratch. Refused while another process writes RUN_DIR."
)


class _RealNumber(click.ParamType):
    """A command-line number of a :class:`~cnnx.training.settings.Real` kind (finite, within its bounds)."""

    name = "float"

    def __init__(self, kind: Real):
        self.kind = kind

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not self.kind.ok(number):
            self.fail(f"must be {self.kind.describe()}, got {value}", param, ctx)
        return number


def _click_type(kind):
    """The click type of a setting's kind: its range, choices or path checked as the options are read."""
    if isinstance(kind, Whole):
        return click.IntRange(min=kind.low, max=kind.high)
    if isinstance(kind, Real):
        return _RealNumber(kind)
    if isinstance(kind, Directory):
        return click.Path(file_okay=False, path_type=Path)
    options = getattr(kind, "options", None)
    return click.Choice(list(options)) if options is not None else str


def _setting_options(command):
    """``command`` with an option for every RunConfig field that has one (``--batch-size`` for
    ``batch_size``): its type from the field's kind, its help from the field's doc."""
    for field in reversed([field for field in RunConfig.declared() if field.metadata["option"]]):
        default = default_of(field)
        command = click.option(
            option_name(field.name),
            field.name,
            type=_click_type(field.metadata["kind"]),
            default=default,
            show_default=default is not None,
            metavar=field.metadata["metavar"],
            help=doc_of(field, option_name),
        )(command)
    return command


def _given(ctx: click.Context, options: dict) -> dict:
    """The run settings given as options (not left at their defaults), by RunConfig field."""
    return {
        name: str(value) if isinstance(value, Path) else value
        for name, value in options.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }


def _in_the_users_words(command):
    """Say a SettingError as the user gave the setting: as an option when it came from one, else as the
    run file's key, after the file's name (``run.toml: data_dir '/x' has no Fashion-MNIST ...``)."""

    @functools.wraps(command)
    def said(ctx: click.Context, config_path, out, resume_dir, quiet, **options):
        try:
            return command(ctx, config_path, out, resume_dir, quiet, **options)
        except SettingError as exc:
            if exc.field is not None and exc.field in _given(ctx, options):
                raise ConfigError(exc.text(Setting.as_option)) from None
            if exc.source is None and config_path is not None and resume_dir is None:
                raise exc.located(str(config_path)) from None
            raise

    return said


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="RUN.toml",
    help=CONFIG_HELP,
)
@_setting_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    show_default="runs/<timestamp>-<model>-<optimizer>",
    help="Run directory; must be new, empty, or what a run killed before its first checkpoint left.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help=RESUME_HELP,
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@import_option()
@click.pass_context
@_in_the_users_words
def train(ctx: click.Context, config_path, out, resume_dir, quiet, **options) -> None:
    """Train a model on Fashion-MNIST (or another --dataset) and write a run directory.

    The run directory receives model.npz (the checkpoint: weights, optimizer state, random streams,
    batch order and history, rewritten after every epoch and every --checkpoint-every steps),
    metrics.json (configuration, status, per-epoch history, confusion matrix, per-class report),
    curves.png, confusion_matrix.png and samples.png, and steps.png with --log-every or --eval-every.
    With --validation also best.npz, the best epoch's weights, which the results and figures then
    describe (metrics.json results_of names them). Ctrl-C or SIGTERM finishes the current step,
    writes a checkpoint and exits with status 130 or 143; `cnnx train --resume RUN_DIR` continues the
    run, with the same result as if it had never stopped. A second Ctrl-C stops at once.

    Under `mpiexec -n N` (pip install 'cnnx[mpi]') the N ranks train one model together, each running
    its shards of every batch, with the numbers of one process; rank 0 prints and writes.
    """
    from cnnx.training import RunConfig, resume_config
    from cnnx.training.ranks import writes

    quiet = quiet or not writes()  # under mpiexec, rank 0 speaks for every rank
    given = _given(ctx, options)
    if resume_dir is not None:
        if config_path is not None:
            raise click.UsageError(
                "--config cannot be combined with --resume (the run keeps its own settings)"
            )
        config = resume_config(resume_dir, given | ({"out": out} if out is not None else {}))
    elif config_path is not None:
        config = RunConfig.from_file(config_path, overrides=given)
    else:
        config = RunConfig.from_dict(given)
    run = _run_until_stopped(ctx, config, resume_dir or out, resume=resume_dir is not None, quiet=quiet)
    if not quiet:
        from cnnx.training.progress import summary

        click.echo(summary(run))


def _run_until_stopped(ctx: click.Context, config, out: Path | None, *, resume: bool, quiet: bool):
    """``run_training`` with SIGINT/SIGTERM handlers installed around it: a stop writes a checkpoint and
    exits with 130 or 143 after saying how to resume; a second signal exits at once."""
    from cnnx.training import run_training
    from cnnx.training.interrupt import EXIT_STATUS, StopFlag, StopNow, TrainingInterrupted, stop_on_signals
    from cnnx.training.ranks import launcher, writes
    from cnnx.training.rundir import CHECKPOINT

    say = echo if writes() else _silent  # under mpiexec, rank 0 speaks for every rank

    def notify(name: str) -> None:
        say(
            f"\ncnnx: {name} received: finishing this step and writing a checkpoint "
            "(send it again to stop at once)",
            err=True,
        )

    started = {"out": out}
    try:
        with stop_on_signals(StopFlag(), notify) as flag:
            return run_training(
                config,
                out,
                runs_root="runs",
                resume=resume,
                stop=flag,
                progress="none" if quiet else "auto",
                echo=None if quiet else echo,
                on_start=lambda run: started.update(out=run.out),
            )
    except TrainingInterrupted as exc:
        say(
            f"cnnx: stopped by {exc.reason} at epoch {exc.epoch}, batch {exc.batch}; "
            f"checkpoint written to {exc.checkpoint}",
            err=True,
        )
        say(f"resume with: {launcher()}cnnx train --resume {started['out']}", err=True)
        ctx.exit(EXIT_STATUS.get(exc.reason, 130))
    except StopNow as exc:
        last = None if started["out"] is None else started["out"] / CHECKPOINT
        if last is not None and last.exists():
            kept = f"the last good checkpoint is {last}"
        else:
            kept = "no checkpoint was written yet"
        say(f"\ncnnx: stopped at once by a second {exc.signal_name}; {kept}", err=True)
        if last is not None and last.exists():
            say(f"resume with: {launcher()}cnnx train --resume {started['out']}", err=True)
        ctx.exit(EXIT_STATUS.get(exc.signal_name, 130))


def _silent(*args, **kwargs) -> None:
    pass

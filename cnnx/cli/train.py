"""``cnnx train``: a thin layer over :func:`cnnx.training.run_training`. Options (or a TOML file of the
same fields, ``--config``) make a RunConfig; ``--resume`` rebuilds the run's own."""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import click
from click.core import ParameterSource

from cnnx.data.catalog import DATASETS
from cnnx.errors import ConfigError
from cnnx.fileio import echo
from cnnx.optim import OPTIMIZERS, SCHEDULES
from cnnx.training.config import (
    CHANGEABLE,
    DIVERGENCE_MODES,
    DTYPES,
    MAX_EPOCHS,
    RunConfig,
    Setting,
    SettingError,
)
from cnnx.training.resume import option_name

from .options import data_dir_option, device_option, model_option

DEFAULTS = RunConfig()
# click parameter name -> RunConfig field, for the options that are run settings
FIELDS = {"model_name": "model", "optimizer_name": "optimizer"} | {name: name for name in (
    "device", "lr", "epochs", "batch_size", "seed", "data_dir", "limit", "dtype",
    "checkpoint_every", "on_divergence", "max_steps", "log_every", "eval_every", "weight_decay",
    "lr_schedule", "warmup_steps", "lr_step_every", "lr_gamma", "clip_grad_norm", "augment", "dataset",
    "validation", "early_stopping", "dropout",
)}  # fmt: skip
DEFAULT_LRS = ", ".join(
    f"{name} {inspect.signature(cls.__init__).parameters['lr'].default:g}" for name, cls in OPTIMIZERS.items()
)


def _listing(words) -> str:
    """ "a, b and c"."""
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


# The run file's keys (RunConfig's fields, the options' names with underscores and a few that are no
# option), and what --resume may extend and change (the options of RunConfig's CHANGEABLE fields).
CONFIG_HELP = (
    f"Read the run's settings from a TOML file whose keys ({', '.join(RunConfig.fields())}) are these "
    "options' names with underscores, and "
    + _listing(field for field in RunConfig.fields() if field not in FIELDS.values())
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


def _given(ctx: click.Context, options: dict) -> dict:
    """The run settings given as options (not left at their defaults), by RunConfig field."""
    return {
        FIELDS[name]: str(value) if isinstance(value, Path) else value
        for name, value in options.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }


def _as_option(setting: Setting) -> str:
    """A setting as the command line spells it: ``--validation 0.1``."""
    flag = option_name(setting.field)
    return f"{flag} {setting.value}" if setting.has_value else flag


def _in_the_users_words(command):
    """Say a SettingError as the user gave the setting: as an option when it came from one, else as the
    run file's key, after the file's name (``run.toml: data_dir '/x' has no Fashion-MNIST ...``)."""

    @functools.wraps(command)
    def said(ctx: click.Context, config_path, out, resume_dir, quiet, **options):
        try:
            return command(ctx, config_path, out, resume_dir, quiet, **options)
        except SettingError as exc:
            if exc.field is not None and exc.field in _given(ctx, options):
                raise ConfigError(exc.text(_as_option)) from None
            if exc.source is None and config_path is not None and resume_dir is None:
                raise exc.located(str(config_path)) from None
            raise

    return said


def _positive_finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive finite number, got {value}")
    return value


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="RUN.toml",
    help=CONFIG_HELP,
)
@device_option(DEFAULTS.device)
@model_option(DEFAULTS.model)
@click.option(
    "--optimizer",
    "optimizer_name",
    type=click.Choice(list(OPTIMIZERS)),
    default=DEFAULTS.optimizer,
    show_default=True,
    help="Update rule (momentum is the report's moving-average form, see cnnx.optim.Momentum).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    callback=_positive_finite,
    show_default=f"the optimizer's own: {DEFAULT_LRS}",
    help="Learning rate (may change when resuming).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1, max=MAX_EPOCHS),
    default=DEFAULTS.epochs,
    show_default=True,
    help="Passes over the training set.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True,
    help="Images per step.",
)  # fmt: skip
@click.option(
    "--seed",
    type=int,
    default=DEFAULTS.seed,
    show_default=True,
    help="Seeds the initial weights, the layers' random streams and the batch order.",
)
@data_dir_option()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="runs/<timestamp>-<model>-<optimizer>",
    help="Run directory; must be new, empty, or what a run killed before its first checkpoint left.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train on a fixed, class-balanced subset of N training images, and evaluate each epoch on "
    "ceil(N/6) test images (the full set's 6:1 ratio).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=DEFAULTS.dtype,
    show_default=True,
    help="Floating-point type of weights and activations.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Also write the checkpoint every N steps (default: at the end of every epoch only).",
)
@click.option(
    "--on-divergence",
    type=click.Choice(DIVERGENCE_MODES),
    default=DEFAULTS.on_divergence,
    show_default=True,
    help="On a NaN or infinite loss or gradient: stop (naming the epoch, batch and layer; the last good "
    "checkpoint stays), or skip that step and count it (costs one device read-back per step).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Stop after N optimizer steps in all, in the middle of an epoch if need be (--epochs must hold "
    "them).",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Record the mean training loss of every N steps (metrics.json curves).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Evaluate on the test set every K steps, into metrics.json curves (each costs one test pass).",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=None,
    metavar="X",
    help="Weight decay: L2 for sgd and momentum, decoupled for adam (AdamW). Default 0.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(SCHEDULES),
    default=None,
    help="How the learning rate moves, per batch: constant (default), step (times --lr-gamma every "
    "--lr-step-every steps), cosine (down to 0) or onecycle (up to --lr over 30 %, then down).",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Climb linearly to the learning rate over the first N steps (fewer than the run has), then follow "
    "the schedule.",
)
@click.option(
    "--lr-step-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="For --lr-schedule step only: steps between two drops, fewer than the run has after the warm-up "
    "(default: a third of them).",
)
@click.option(
    "--lr-gamma",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=None,
    metavar="X",
    help="For --lr-schedule step only: the factor of each drop (default 0.1).",
)
@click.option(
    "--clip-grad-norm",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="X",
    help="Scale all gradients down together when their global norm exceeds X.",
)
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=None,
    help="fashion-mnist (default; --data-dir or the search order), mnist or kmnist (--data-dir, the user "
    "cache, or a verified download), or digits (scikit-learn's 8x8 digits, upsampled to 28x28, offline).",
)
@click.option(
    "--validation",
    type=click.FloatRange(min=0, max=0.5, min_open=True),
    default=None,
    metavar="FRACTION",
    help="Hold out a seeded, stratified FRACTION of the training set, score it every epoch, and keep the "
    "best epoch's weights in best.npz (which cnnx evaluate and predict use when given the run directory).",
)
@click.option(
    "--early-stopping",
    type=click.IntRange(min=1),
    default=None,
    metavar="EPOCHS",
    help="With --validation: stop once the validation loss has not improved for EPOCHS epochs.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=None,
    metavar="P",
    help="Set every Dropout layer of the model to rate P (seed-dropout, cnn-bn and vgg-bn have them; "
    "default: the model's own rates).",
)
@click.option(
    "--augment",
    default=None,
    metavar="SPEC",
    help="Random transforms of every training batch, e.g. rotate=10,zoom=0.1,shift=2,flip,erase=0.5 "
    "(degrees, scale change, pixels, and the probabilities of a flip and of an erased rectangle); see "
    "them with cnnx augmentations show.",
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
    """
    from cnnx.training import RunConfig, resume_config

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
    from cnnx.training.rundir import CHECKPOINT

    def notify(name: str) -> None:
        echo(
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
        echo(
            f"cnnx: stopped by {exc.reason} at epoch {exc.epoch}, batch {exc.batch}; "
            f"checkpoint written to {exc.checkpoint}",
            err=True,
        )
        echo(f"resume with: cnnx train --resume {started['out']}", err=True)
        ctx.exit(EXIT_STATUS.get(exc.reason, 130))
    except StopNow as exc:
        last = None if started["out"] is None else started["out"] / CHECKPOINT
        if last is not None and last.exists():
            kept = f"the last good checkpoint is {last}"
        else:
            kept = "no checkpoint was written yet"
        echo(f"\ncnnx: stopped at once by a second {exc.signal_name}; {kept}", err=True)
        if last is not None and last.exists():
            echo(f"resume with: cnnx train --resume {started['out']}", err=True)
        ctx.exit(EXIT_STATUS.get(exc.signal_name, 130))

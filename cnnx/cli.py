"""The ``cnnx`` command line (click): train, evaluate, predict and info.

A problem the user can fix (a :class:`~cnnx.errors.CnnxError`, or the operating system refusing a file)
ends the command with one line, ``cnnx: error: <message>``, on stderr and exit status 1; click's own
usage errors keep click's message and exit status 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import inspect
import math
import platform
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__
from .checkpoint import MAX_EPOCHS
from .errors import CheckpointError, CnnxError
from .optim import OPTIMIZERS
from .options import device_option, model_option
from .train import DIVERGENCE_MODES

_DEFAULTS = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
DEFAULT_LRS = ", ".join(
    f"{name} {inspect.signature(cls.__init__).parameters['lr'].default:g}" for name, cls in OPTIMIZERS.items()
)
DATA_DIR_HELP = (
    "Directory with the four Fashion-MNIST IDX files or the Kaggle CSVs (default: search, then download)."
)


class UserError(click.ClickException):
    """A CnnxError on its way out: one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"cnnx: error: {self.message}", err=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


class CnnxGroup(click.Group):
    """A click group that turns user-fixable errors into :class:`UserError`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (CnnxError, OSError) as exc:
            raise UserError(_one_line(exc)) from None


def _positive_finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive finite number, got {value}")
    return value


@click.group(cls=CnnxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnx")
def cli() -> None:
    """cnnx: a from-scratch CNN for Fashion-MNIST on the CPU (NumPy) or a CUDA GPU (CuPy)."""


@cli.command()
@device_option()
@model_option()
@click.option(
    "--optimizer",
    "optimizer_name",
    type=click.Choice(list(OPTIMIZERS)),
    default="adam",
    show_default=True,
    help="Update rule (momentum is the report's moving-average form, see cnnx.optim.Momentum).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    callback=_positive_finite,
    show_default=f"the optimizer's own: {DEFAULT_LRS}",
    help="Learning rate.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1, max=MAX_EPOCHS),
    default=5,
    show_default=True,
    help="Passes over the training set.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Images per step."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the initial weights and the batch order."
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="runs/<timestamp>-<model>-<optimizer>",
    help="Run directory; must be new or empty.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Train on a fixed class-balanced subset of N images (and ceil(N/6) test images).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
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
    default="stop",
    show_default=True,
    help="On a NaN or infinite loss or gradient: stop (naming the epoch, batch and layer; the last good "
    "checkpoint stays), or skip that step and count it (costs one device read-back per step).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue the run in RUN_DIR from its last checkpoint, with its recorded settings "
    "(--epochs may extend it; --device, --data-dir, --checkpoint-every and --on-divergence may change).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def train(ctx: click.Context, **options) -> None:
    """Train a model on Fashion-MNIST and write a run directory.

    The run directory receives model.npz (the checkpoint: weights, optimizer state, batch order and
    history, rewritten after every epoch and every --checkpoint-every steps), metrics.json
    (configuration, status, per-epoch history, confusion matrix, per-class report), curves.png,
    confusion_matrix.png and samples.png. Ctrl-C or SIGTERM finishes the current step, writes a
    checkpoint and exits with status 130 or 143; `cnnx train --resume RUN_DIR` continues the run, with
    the same result as if it had never stopped. A second Ctrl-C stops at once.
    """
    from .backends import get_backend
    from .checkpoint import check_run_dir, default_run_dir, estimate_run_bytes, resume_settings
    from .data import load_fashion_mnist
    from .model import build_model
    from .optim import make_optimizer

    o = dict(options)
    given = {name: o[name] for name in o if ctx.get_parameter_source(name) not in _DEFAULTS}
    resume_dir = o.pop("resume_dir")
    backend = get_backend(o["device"])  # "gpu" without a usable GPU stops here with the reason
    optimizer_options = {}
    if resume_dir is not None:
        given.pop("resume_dir")
        o.update(resume_settings(resume_dir, given))
        optimizer_options = {k: v for k, v in o.pop("optimizer").items() if k not in ("name", "lr")}
        o["data_dir"] = given.get("data_dir", o["data_dir"])
    out = resume_dir or o["out"] or default_run_dir(o["model_name"], o["optimizer_name"])
    model = build_model(o["model_name"], backend=backend, dtype=o["dtype"], seed=o["seed"])
    try:
        optimizer = make_optimizer(o["optimizer_name"], model, o["lr"], **optimizer_options)
    except TypeError as exc:  # a checkpoint naming hyper-parameters this optimizer does not have
        raise CheckpointError(f"{out}: the recorded optimizer settings are unusable ({exc})") from None
    # Before the minutes of loading and training, not after them: writable, enough space, new or resumable.
    check_run_dir(out, need_bytes=estimate_run_bytes(model, optimizer), resume=resume_dir is not None)
    dataset = load_fashion_mnist(o["data_dir"], limit=o["limit"])
    quiet = o["quiet"]
    if not quiet:
        verb = f"resuming {out}:" if resume_dir is not None else "training"
        click.echo(
            f"{verb} {o['model_name']} ({model.parameter_count():,} parameters, {o['dtype']}) with "
            f"{o['optimizer_name']} lr {optimizer.lr:g} on {backend.describe()}"
        )
        click.echo(
            f"data: {len(dataset.train_images):,} train / {len(dataset.test_images):,} test images "
            f"from {dataset.source}; writing {out}"
        )
    history = _fit_until_stopped(
        ctx,
        model,
        optimizer,
        dataset,
        out,
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        seed=o["seed"],
        out_dir=out,
        progress="none" if quiet else "auto",
        checkpoint_every=o["checkpoint_every"],
        on_divergence=o["on_divergence"],
        resume=resume_dir is not None,
        config={
            "limit": o["limit"],
            "requested_device": o["device"],
            "data_dir": None if o["data_dir"] is None else str(o["data_dir"]),
        },
    )
    if not quiet:
        click.echo(
            f"test accuracy {history[-1]['test_accuracy']:.4f} after {len(history)} epochs; outputs in {out}"
        )


def _fit_until_stopped(ctx: click.Context, model, optimizer, dataset, out: Path, **options) -> list[dict]:
    """``fit`` with SIGINT/SIGTERM handlers installed around it: a stop writes a checkpoint and exits
    with 130 or 143 after saying how to resume; a second signal exits at once."""
    from .interrupt import EXIT_STATUS, StopFlag, StopNow, TrainingInterrupted, stop_on_signals
    from .train import fit

    def notify(name: str) -> None:
        click.echo(
            f"\ncnnx: {name} received: finishing this step and writing a checkpoint "
            "(send it again to stop at once)",
            err=True,
        )

    hint = f"resume with: cnnx train --resume {out}"
    try:
        with stop_on_signals(StopFlag(), notify) as flag:
            return fit(model, optimizer, dataset, stop=flag, **options)
    except TrainingInterrupted as exc:
        click.echo(
            f"cnnx: stopped by {exc.reason} at epoch {exc.epoch}, batch {exc.batch}; "
            f"checkpoint written to {exc.checkpoint}",
            err=True,
        )
        click.echo(hint, err=True)
        ctx.exit(EXIT_STATUS.get(exc.reason, 130))
    except StopNow as exc:
        last = out / "model.npz"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        click.echo(f"\ncnnx: stopped at once by a second {exc.signal_name}; {kept}", err=True)
        if last.exists():
            click.echo(hint, err=True)
        ctx.exit(EXIT_STATUS.get(exc.signal_name, 130))


@cli.command(short_help="Evaluate a saved model on the test set.")
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP
)
@device_option()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on the fixed class-balanced test subset that train --limit N uses (ceil(N/6) images).",
)
def evaluate(model_path, data_dir, device, limit):
    """Test-set loss, accuracy, confusion matrix and per-class report of a saved model."""
    from .data import CLASS_NAMES, load_fashion_mnist
    from .metrics import confusion_matrix, format_confusion_matrix, format_report, per_class_report
    from .train import evaluate as evaluate_model

    model = _load(model_path, device)
    dataset = load_fashion_mnist(data_dir, limit=limit)
    labels = dataset.test_labels.astype("int64")
    loss, accuracy, predictions = evaluate_model(model, dataset.test_images, labels)
    click.echo(f"{model_path}: {model.name} on {len(labels):,} test images from {dataset.source}")
    click.echo(f"accuracy {accuracy:.4f}  loss {loss:.4f}\n")
    click.echo("confusion matrix (rows: true class, columns: predicted)")
    click.echo(format_confusion_matrix(confusion_matrix(labels, predictions, len(CLASS_NAMES)), CLASS_NAMES))
    click.echo("")
    click.echo(format_report(per_class_report(labels, predictions, CLASS_NAMES)))


@cli.command(short_help="Classify image files with a saved model.")
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top",
    "top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many classes to list per image, most probable first.",
)
@device_option()
def predict(model_path, files, top, device):
    """Classify images: 28x28 PNGs, IDX image files (.gz or raw) or Kaggle-style CSVs.

    Prints one line per image: its file (with the index inside multi-image files) and the top classes
    with their probabilities.
    """
    from .data import CLASS_NAMES, read_image_file, scale_pixels

    model = _load(model_path, device)
    names = CLASS_NAMES if model.output_shapes()[-1][0] == len(CLASS_NAMES) else None
    for path in files:
        images = read_image_file(path)
        probabilities = model.predict_proba(scale_pixels(images, model.dtype))
        for i, row in enumerate(probabilities):
            best = row.argsort()[::-1][:top]
            where = str(path) if len(images) == 1 else f"{path}[{i}]"
            ranked = ", ".join(f"{names[k] if names else k} {row[k]:.3f}" for k in best)
            click.echo(f"{where}: {ranked}")


@cli.command(short_help="Versions, usable backends and where the dataset is.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also check this directory for the dataset.",
)
def info(data_dir):
    """Versions, which backends are usable here (or why not), and where the dataset is."""
    from .backends import available_backends, get_backend
    from .checkpoint import versions
    from .data import candidate_dirs, find_dataset

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


def _load(model_path: Path, device: str):
    from .model import load_model

    model = load_model(model_path, device=device)
    if model.input_shape != (1, 28, 28):
        raise CheckpointError(
            f"{model_path}: the model takes inputs of shape {model.input_shape}, "
            "Fashion-MNIST images are (1, 28, 28)"
        )
    return model


from .bench import bench  # noqa: E402  (the command lives beside the benchmark it runs)

cli.add_command(bench)


def main() -> None:
    """Entry point of the ``cnnx`` console script and ``python -m cnnx``."""
    cli(prog_name="cnnx")

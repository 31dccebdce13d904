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

from . import __version__
from .errors import CheckpointError, CnnxError
from .model import PRESETS
from .optim import OPTIMIZERS

DEVICE = click.Choice(["cpu", "gpu", "auto"])
MODEL_HELP = (
    "Architecture preset: " + "; ".join(f"{name}, {text}" for name, (_, text) in PRESETS.items()) + "."
)
DEFAULT_LRS = ", ".join(
    f"{name} {inspect.signature(cls.__init__).parameters['lr'].default:g}" for name, cls in OPTIMIZERS.items()
)
DEVICE_HELP = (
    "cpu (NumPy), gpu (CuPy; fails with the reason when no CUDA device is usable) or auto (gpu if usable)."
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
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help=DEVICE_HELP)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(list(PRESETS)),
    default="seed",
    show_default=True,
    help=MODEL_HELP,
)
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
    "--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Passes over the training set."
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
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def train(
    device, model_name, optimizer_name, lr, epochs, batch_size, seed, data_dir, out, limit, dtype, quiet
):
    """Train a model on Fashion-MNIST and write a run directory.

    The run directory receives model.npz (the checkpoint, rewritten after every epoch), metrics.json
    (configuration, per-epoch history, confusion matrix, per-class report), curves.png,
    confusion_matrix.png and samples.png. A loss that stops being finite ends the run with an error
    and keeps the last good checkpoint.
    """
    from .backends import get_backend
    from .data import load_fashion_mnist
    from .model import build_model
    from .optim import make_optimizer
    from .train import check_run_dir, default_run_dir, fit

    backend = get_backend(device)  # "gpu" without a usable GPU stops here with the reason
    out = out if out is not None else default_run_dir(model_name, optimizer_name)
    check_run_dir(out)  # before the minutes of loading and training, not after them
    dataset = load_fashion_mnist(data_dir, limit=limit)
    model = build_model(model_name, backend=backend, dtype=dtype, seed=seed)
    optimizer = make_optimizer(optimizer_name, model, lr)
    if not quiet:
        click.echo(
            f"training {model_name} ({model.parameter_count():,} parameters, {dtype}) with "
            f"{optimizer_name} lr {optimizer.lr:g} on {backend.describe()}"
        )
        click.echo(
            f"data: {len(dataset.train_images):,} train / {len(dataset.test_images):,} test images "
            f"from {dataset.source}; writing {out}"
        )
    history = fit(
        model,
        optimizer,
        dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        out_dir=out,
        progress="none" if quiet else "auto",
        config={"limit": limit, "requested_device": device},
    )
    if not quiet:
        click.echo(
            f"test accuracy {history[-1]['test_accuracy']:.4f} after {len(history)} epochs; outputs in {out}"
        )


@cli.command(short_help="Evaluate a saved model on the test set.")
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP
)
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help=DEVICE_HELP)
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
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help=DEVICE_HELP)
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
    from .data import candidate_dirs, find_dataset
    from .train import versions

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

"""The training loop: seeded mini-batch epochs, evaluation, per-epoch checkpoints and the divergence guard.

The dataset stays on the host as uint8; each batch is scaled and sent to the device on its own, so a full
training run holds one copy of the images, not a float copy of them. Loss and accuracy sums stay on the
device and are read back every ``check_every`` batches and at the end of each epoch; those read-backs
are where finiteness is checked, so a NaN costs no extra synchronisation.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import click
import numpy as np  # host: batch order, read-back values and run records live on the host

from . import __version__
from .data import CLASS_NAMES, scale_pixels
from .errors import CheckpointError, ConfigError, DataError, DivergenceError
from .fileio import atomic_write
from .losses import correct_count, softmax_cross_entropy
from .metrics import confusion_matrix, per_class_report
from .model import read_archive

PROGRESS_MODES = ("auto", "bar", "lines", "none")
OPTIM_PREFIX = "optim/"
SHUFFLE_STREAM = 1  # mixed into the seed so the batch order is not drawn from the weights' stream


def train_step(model, optimizer, x, labels):
    """One forward / loss / backward / update on device arrays; returns (loss summed over the batch,
    number correct) as 0-d device arrays, without reading anything back to the host."""
    logits = model.forward(x, train=True)
    loss, dlogits = softmax_cross_entropy(model.xp, logits, labels)
    model.backward(dlogits)
    optimizer.step()
    return loss * x.shape[0], correct_count(model.xp, logits, labels)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256):
    """Mean loss, accuracy and predicted classes of ``model`` on host uint8 ``images`` (N, 28, 28).

    Returns ``(loss, accuracy, predictions)`` as host values: a float, a float and an int64 vector.
    """
    backend, xp = model.backend, model.xp
    loss_sum = xp.zeros((), dtype="float64")
    predictions = []
    for start in range(0, len(images), batch_size):
        x = backend.to_device(scale_pixels(images[start : start + batch_size], model.dtype), model.dtype)
        y = backend.to_device(labels[start : start + batch_size], "int64")
        logits = model.forward(x, train=False)
        loss, _ = softmax_cross_entropy(xp, logits, y)
        loss_sum += loss * x.shape[0]
        predictions.append(logits.argmax(axis=1))
    if not predictions:
        return math.nan, 0.0, np.zeros(0, np.int64)
    predicted = backend.to_host(xp.concatenate(predictions)).astype(np.int64)
    n = len(images)
    return float(backend.to_host(loss_sum)) / n, float((predicted == labels).mean()), predicted


def fit(
    model,
    optimizer,
    dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    out_dir=None,
    progress: str = "auto",
    check_every: int = 50,
    config: dict | None = None,
) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs on ``dataset`` and return the per-epoch history.

    Batches come in an order drawn from a host generator seeded with ``seed``, so every backend sees
    the same batches. Each history row holds ``epoch, train_loss, train_accuracy, test_loss,
    test_accuracy, seconds`` (the epoch's wall time, evaluation included). With ``out_dir``, the
    checkpoint ``model.npz`` and ``metrics.json`` are rewritten after every epoch and the figures after
    the last; ``config`` entries (``limit``, ``device``, ...) are added to the recorded configuration.
    ``progress`` is "auto" (a bar on a terminal, else one line per epoch), "bar", "lines" or "none".
    Raises DivergenceError when the loss stops being finite; the last good checkpoint stays on disk.
    """
    if epochs < 1 or batch_size < 1 or check_every < 1:
        raise ConfigError(
            f"epochs, batch size and check interval must be >= 1 (got {epochs}, {batch_size}, {check_every})"
        )
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"unknown progress mode {progress!r}: choose one of {', '.join(PROGRESS_MODES)}")
    out = prepare_run_dir(out_dir) if out_dir is not None else None
    record = run_record(
        model, optimizer, dataset, epochs=epochs, batch_size=batch_size, seed=seed, extra=config
    )
    run = _Run(model, optimizer, dataset, batch_size, check_every, out)
    reporter = _Reporter(progress, epochs, run.batches)
    rng = shuffle_rng(seed)
    history: list[dict] = []
    record["status"] = "running"
    # NumPy's overflow warnings would only repeat, less clearly, what the divergence guard reports.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            for epoch in range(1, epochs + 1):
                row, predictions = run.epoch(epoch, rng.permutation(len(run.images)), reporter)
                history.append(row)
                reporter.end(row)
                if out is not None:
                    settings = {"batch_size": batch_size, "seed": seed, "epochs": epochs}
                    save_checkpoint(out / "model.npz", model, optimizer, epoch, rng, history, settings)
                    record.update(results(history, run.test_labels, predictions, run.num_classes))
                    write_json(out / "metrics.json", record)
        except DivergenceError as exc:
            if out is not None:  # the record keeps the last good epoch's results, like the checkpoint
                record.update(status="diverged", error=str(exc))
                write_json(out / "metrics.json", record)
            raise
        finally:
            reporter.close()
    if out is not None:
        record["status"] = "completed"
        write_json(out / "metrics.json", record)
        write_plots(out, history, dataset.test_images, run.test_labels, predictions)
    return history


class _Run:
    """What one epoch needs: the model and optimizer, the host data, and where checkpoints go."""

    def __init__(self, model, optimizer, dataset, batch_size: int, check_every: int, out: Path | None):
        self.model, self.optimizer, self.out = model, optimizer, out
        self.backend, self.xp = model.backend, model.xp
        self.batch_size, self.check_every = batch_size, check_every
        self.images, self.test_images = dataset.train_images, dataset.test_images
        self.labels = np.asarray(dataset.train_labels, np.int64)
        self.test_labels = np.asarray(dataset.test_labels, np.int64)
        self.num_classes = model.output_shapes()[-1][0]
        for name, values in (("training", self.labels), ("test", self.test_labels)):
            if len(values) and (values.min() < 0 or values.max() >= self.num_classes):
                raise DataError(f"{name} labels must lie in [0, {self.num_classes}), found "
                                f"{values.min()}..{values.max()}")  # fmt: skip
        if len(self.images) == 0:
            raise DataError("the training set is empty")
        self.batches = -(-len(self.images) // batch_size)

    def epoch(self, epoch: int, order: np.ndarray, reporter: _Reporter) -> tuple[dict, np.ndarray]:
        """Train on the batches of ``order``, then evaluate: (history row, test predictions)."""
        backend, xp, model, n = self.backend, self.xp, self.model, len(self.images)
        started = time.perf_counter()
        loss_sum = xp.zeros((), dtype="float64")
        correct = xp.zeros((), dtype="int64")
        first_bad = xp.zeros((), dtype="int64")  # 1-based index of the first non-finite batch; 0: none
        reporter.start(epoch)
        for batch in range(1, self.batches + 1):
            index = order[(batch - 1) * self.batch_size : batch * self.batch_size]
            x = backend.to_device(scale_pixels(self.images[index], model.dtype), model.dtype)
            y = backend.to_device(self.labels[index], "int64")
            batch_loss, batch_correct = train_step(model, self.optimizer, x, y)
            loss_sum += batch_loss
            correct += batch_correct
            first_bad += (~xp.isfinite(batch_loss) & (first_bad == 0)) * batch  # stays on the device
            text = None
            if batch % self.check_every == 0 and batch < self.batches:
                running = float(backend.to_host(loss_sum)) / min(batch * self.batch_size, n)
                self._check_finite(running, first_bad, epoch)
                text = f"loss {running:.4f}"
            reporter.advance(text)
        train_loss = float(backend.to_host(loss_sum)) / n
        self._check_finite(train_loss, first_bad, epoch)
        train_accuracy = int(backend.to_host(correct)) / n
        test_loss, test_accuracy, predictions = evaluate(
            model, self.test_images, self.test_labels, self.batch_size
        )
        if len(self.test_labels) and not math.isfinite(test_loss):
            raise DivergenceError(f"the test loss is not finite after epoch {epoch}; {_last_good(self.out)}")
        backend.synchronize()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
               "test_loss": test_loss, "test_accuracy": test_accuracy, "seconds": seconds}  # fmt: skip
        return row, predictions

    def _check_finite(self, value: float, first_bad, epoch: int) -> None:
        if math.isfinite(value):
            return
        batch = int(self.backend.to_host(first_bad))
        where = f"batch {batch}" if batch > 0 else "a batch"
        raise DivergenceError(
            f"training diverged: the loss became non-finite at epoch {epoch}, {where} "
            f"(learning rate {self.optimizer.lr:g}); {_last_good(self.out)}"
        )


def shuffle_rng(seed: int) -> np.random.Generator:
    """The host generator that orders the batches; its ``bit_generator.state`` goes into checkpoints."""
    return np.random.default_rng([int(seed), SHUFFLE_STREAM])


def _last_good(out) -> str:
    if out is None:
        return "no checkpoint is being written"
    path = Path(out) / "model.npz"
    if path.exists():
        return f"the last good checkpoint is {path}"
    return "no epoch finished, so no checkpoint was written"


# -- run directories, records and checkpoints ---------------------------------------------------


def default_run_dir(model_name: str, optimizer_name: str, root="runs") -> Path:
    """``runs/<timestamp>-<model>-<optimizer>``, with a numeric suffix if that name is taken."""
    stem = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}-{optimizer_name}"
    path, n = Path(root) / stem, 2
    while path.exists():
        path, n = Path(root) / f"{stem}-{n}", n + 1
    return path


def check_run_dir(path) -> Path:
    """Refuse a run directory that already holds files (resuming a run is not supported yet)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"run directory {path} is not empty: choose another --out or remove it")
    return path


def prepare_run_dir(path) -> Path:
    """Check the run directory with :func:`check_run_dir`, then create it (and its parents)."""
    path = check_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions() -> dict[str, str | None]:
    """Versions of cnnx, NumPy, CuPy (None when no CuPy wheel is installed) and Python."""
    cupy = None
    for dist in ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"):
        try:
            cupy = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cnnx": __version__, "numpy": np.__version__, "cupy": cupy, "python": platform.python_version()}


def run_record(model, optimizer, dataset, *, epochs, batch_size, seed, extra=None) -> dict:
    """The configuration part of ``metrics.json``: enough to rerun and to compare runs."""
    config = {
        "model": model.name,
        "parameters": model.parameter_count(),
        "optimizer": optimizer.config(),
        "lr": optimizer.lr,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": model.backend.name,
        "device_description": model.backend.describe(),
        "dtype": str(model.dtype),
        "limit": None,
        "data_source": dataset.source,
        "train_size": len(dataset.train_images),
        "test_size": len(dataset.test_images),
        "versions": versions(),
    }
    config.update(extra or {})
    return {"format": "cnnx-run", "version": 1, "config": config}


def results(history: list[dict], labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """The outcome part of ``metrics.json``, from the history and the last epoch's test predictions."""
    names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [str(i) for i in range(num_classes)]
    return {
        "epochs_completed": len(history),
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "class_names": names,
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
        "per_class": per_class_report(labels, predictions, names),
    }


def write_json(path, record: dict) -> Path:
    """Write ``record`` as JSON, atomically: containers of containers indented, others on one line."""
    with atomic_write(path, "w") as handle:
        handle.write(_to_json(record) + "\n")
    return Path(path)


def _to_json(value, depth: int = 0) -> str:
    inner, outer = "  " * (depth + 1), "  " * depth
    nested = (dict, list, tuple)
    if isinstance(value, dict) and any(isinstance(v, nested) for v in value.values()):
        items = [f"{inner}{json.dumps(str(k))}: {_to_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_to_json(v, depth)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, nested) for v in value):
        return "[\n" + ",\n".join(inner + _to_json(v, depth + 1) for v in value) + f"\n{outer}]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_to_json(v, depth) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "null"  # strict JSON has no NaN; a missing value is what it means here
    return json.dumps(value)


def write_plots(out: Path, history, images, labels, predictions) -> None:
    """curves.png, confusion_matrix.png and samples.png for a finished run."""
    from . import plots  # matplotlib is imported only when figures are drawn

    names = list(CLASS_NAMES)
    plots.plot_curves(history, out / "curves.png")
    plots.plot_confusion_matrix(
        confusion_matrix(labels, predictions, len(names)), names, out / "confusion_matrix.png"
    )
    plots.plot_samples(images, labels, predictions, names, out / "samples.png")


def save_checkpoint(path, model, optimizer, epoch: int, rng: np.random.Generator, history, settings) -> Path:
    """Save the model with what resuming needs: optimizer state (arrays under ``optim/``), and in the
    JSON ``meta`` the finished epoch, the shuffle generator's state, the settings and the history."""
    state = optimizer.state_dict(model.backend.to_host)
    extra = {OPTIM_PREFIX + key: np.asarray(value) for key, value in state.items()}
    meta = {
        "kind": "checkpoint",
        "epoch": epoch,
        "optimizer": optimizer.config(),
        "rng_state": rng.bit_generator.state,
        "history": history,
        **settings,
    }
    return model.save(path, extra=extra, meta=meta)


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``meta`` and the optimizer state (``optimizer.load_state_dict`` form) of a checkpoint."""
    header, arrays = read_archive(path)
    meta = header.get("meta")
    if not isinstance(meta, dict) or meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{path}: a model file, but not a training checkpoint")
    state = {key[len(OPTIM_PREFIX) :]: value for key, value in arrays.items() if key.startswith(OPTIM_PREFIX)}
    return meta, state


# -- progress ----------------------------------------------------------------------------------


class _Reporter:
    """Shows progress: a click bar with ETA on a terminal, one line per epoch otherwise, or nothing."""

    def __init__(self, mode: str, epochs: int, batches: int):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode, self.epochs, self.batches = mode, epochs, batches
        self.bar = None

    def start(self, epoch: int) -> None:
        if self.mode == "bar":
            # The text after the bar is the running loss, refreshed only when it was read back anyway.
            self.bar = click.progressbar(
                length=self.batches,
                label=f"epoch {epoch}/{self.epochs}",
                show_eta=True,
                show_pos=True,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()

    def advance(self, text: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def end(self, row: dict) -> None:
        self.close()
        if self.mode != "none":
            click.echo(
                f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} "
                f"acc {row['test_accuracy']:.4f}  {row['seconds']:.1f}s"
            )

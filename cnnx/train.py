"""The training loop: seeded mini-batch epochs, evaluation, checkpoints, resume, stopping and the
divergence guard.

The dataset stays on the host as uint8; each batch is scaled and sent to the device on its own. Loss and
accuracy sums stay on the device and are read back every ``check_every`` batches, at checkpoints and at
the end of each epoch; those read-backs are where finiteness is checked, so a NaN costs no extra
synchronisation (except in skip mode, see :mod:`cnnx.divergence`). With a run directory, a complete
checkpoint (:mod:`cnnx.checkpoint`) is written at every epoch end, every ``checkpoint_every`` steps and
when a stop is requested, and ``fit(..., resume=True)`` continues from it with the same result as a run
that never stopped.
"""

from __future__ import annotations

import math
import sys

import numpy as np  # host: batch order, read-back values and run records live on the host

from .checkpoint import (
    CHECKPOINT,
    METRICS,
    check_run_dir,
    estimate_run_bytes,
    load_checkpoint,
    prepare_run_dir,
    read_checkpoint,
    read_record,
    remove_stale_temporaries,
    run_record,
)
from .data import CLASS_NAMES, scale_pixels
from .divergence import step_is_finite
from .errors import ConfigError, DivergenceError, ResourceError
from .interrupt import TrainingInterrupted
from .losses import correct_count, softmax_cross_entropy
from .modelfile import is_whole_number
from .progress import PROGRESS_MODES, Reporter

__all__ = [
    "DIVERGENCE_MODES",
    "ResourceError",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "read_checkpoint",
    "shuffle_rng",
    "train_step",
]

DIVERGENCE_MODES = ("stop", "skip")
MAX_SKIPS = 20  # consecutive skipped steps after which skip mode gives up: the run is not coming back
SHUFFLE_STREAM = 1  # mixed into the seed so the batch order is not drawn from the weights' stream


def train_step(model, optimizer, x, labels, *, skip_nonfinite: bool = False):
    """One forward / loss / backward / update on device arrays; returns (loss summed over the batch,
    number correct) as 0-d device arrays, without reading anything back to the host.

    With ``skip_nonfinite``, the loss and gradients are checked first (one read-back) and a step where
    any is not finite is not applied: the weights and optimizer state stay as they were and None is
    returned.
    """
    logits = model.forward(x, train=True)
    loss, dlogits = softmax_cross_entropy(model.xp, logits, labels)
    model.backward(dlogits, input_grad=False)  # nobody trains the images: their gradient is skipped
    if skip_nonfinite and not step_is_finite(model, loss):
        return None
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
    checkpoint_every: int | None = None,
    on_divergence: str = "stop",
    max_skips: int = MAX_SKIPS,
    stop=None,
    resume: bool = False,
    config: dict | None = None,
) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs on ``dataset`` and return the per-epoch history.

    Batches come in an order drawn from a host generator seeded with ``seed``, so every backend sees
    the same batches. Each history row holds ``epoch, train_loss, train_accuracy, test_loss,
    test_accuracy, skipped, seconds`` (the epoch's wall time, evaluation included).

    With ``out_dir``, ``metrics.json`` (whose ``status`` is running, completed, interrupted, diverged or
    failed) and the checkpoint ``model.npz`` are rewritten after every epoch, every ``checkpoint_every``
    steps and when stopping; the figures after the last epoch. ``resume=True`` continues the run in
    ``out_dir`` from its checkpoint: model and optimizer must be built as they were, ``batch_size`` and
    ``seed`` must match, and ``epochs`` may be raised. ``config`` entries (``limit``, ``device``, ...)
    are added to the recorded configuration. ``progress`` is "auto" (a bar on a terminal, else one line
    per epoch), "bar", "lines" or "none".

    ``stop`` is polled once per step (any object with a ``requested`` attribute, see
    :class:`cnnx.interrupt.StopFlag`): when it is truthy, the step finishes, a checkpoint is written and
    :class:`TrainingInterrupted` is raised. A non-finite loss or gradient raises DivergenceError naming
    the epoch, batch and layer, keeping the last good checkpoint (``on_divergence="stop"``), or skips
    the step and counts it (``"skip"``, until ``max_skips`` steps in a row were skipped). Running out
    of memory raises :class:`ResourceError` naming the batch size.
    """
    from .run import Run  # the run module calls back into this one's train_step and evaluate

    _check_options(epochs, batch_size, check_every, checkpoint_every, max_skips, progress, on_divergence)
    run = Run(model, optimizer, dataset, batch_size, check_every, checkpoint_every, on_divergence, max_skips)
    run.stop = stop
    if batch_size > len(run.images):
        raise ConfigError(
            f"batch size {batch_size} is larger than the training set ({len(run.images)} images)"
        )
    extra = {"check_every": check_every, "checkpoint_every": checkpoint_every, "on_divergence": on_divergence}
    extra.update(config or {})
    record = run_record(
        model, optimizer, dataset, epochs=epochs, batch_size=batch_size, seed=seed, extra=extra
    )
    need = estimate_run_bytes(model, optimizer)
    if resume:
        if out_dir is None:
            raise ConfigError("resuming needs the run directory (out_dir) that holds the checkpoint")
        run.out = check_run_dir(out_dir, need_bytes=need, resume=True)
        remove_stale_temporaries(run.out)
        run.restore(load_checkpoint(run.out / CHECKPOINT), epochs, seed)
        previous = read_record(run.out / METRICS) or record
        for key in ("error", "stopped_at"):
            previous.pop(key, None)
        # The recorded settings stay; what may change on resuming (epochs, device, intervals) is updated.
        changeable = ("epochs", "device", "device_description", *extra)
        previous["config"].update({k: record["config"][k] for k in changeable})
        previous["resumes"] = previous.get("resumes", 0) + 1
        record = previous
    else:
        run.out = prepare_run_dir(out_dir, need_bytes=need) if out_dir is not None else None
        run.rng = shuffle_rng(seed)
    record["status"] = "running"
    run.record = record
    run.write_record()
    reporter = Reporter(progress, epochs, run.batches)
    # NumPy's overflow warnings would only repeat, less clearly, what the divergence guard reports.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            predictions = run.train(epochs, reporter)
        except TrainingInterrupted as exc:
            run.finish(
                "interrupted", stopped_at={"epoch": exc.epoch, "batch": exc.batch, "reason": exc.reason}
            )
            raise
        except (DivergenceError, ResourceError) as exc:
            run.finish("diverged" if isinstance(exc, DivergenceError) else "failed", error=str(exc))
            raise
        except KeyboardInterrupt:
            run.finish("interrupted", error="stopped at once, without a new checkpoint")
            raise
        except _out_of_memory() as exc:
            message = (
                f"out of memory training with batch size {batch_size} on {model.backend.describe()} "
                f"({type(exc).__name__}): try a smaller one, e.g. --batch-size {max(1, batch_size // 2)}"
            )
            run.finish("failed", error=message)
            raise ResourceError(message) from None
        except BaseException as exc:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            reporter.close()
    if run.out is not None:
        run.write(run.out / "curves.png", lambda: write_plots(run.out, run.history, dataset.test_images,
                                                              run.test_labels, predictions))  # fmt: skip
        run.finish("completed")
    return run.history


def _check_options(epochs, batch_size, check_every, checkpoint_every, max_skips, progress, on_divergence):
    for name, value in (("epochs", epochs), ("batch size", batch_size), ("check interval", check_every),
                        ("checkpoint interval", checkpoint_every), ("max_skips", max_skips)):  # fmt: skip
        if value is None and name == "checkpoint interval":
            continue
        if not is_whole_number(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"unknown progress mode {progress!r}: choose one of {', '.join(PROGRESS_MODES)}")
    if on_divergence not in DIVERGENCE_MODES:
        raise ConfigError(
            f"on_divergence must be one of {', '.join(DIVERGENCE_MODES)}, got {on_divergence!r}"
        )


def _out_of_memory() -> tuple[type[BaseException], ...]:
    """NumPy's MemoryError, and CuPy's OutOfMemoryError if CuPy is loaded (if not, it raised nothing)."""
    cupy = sys.modules.get("cupy")
    oom = getattr(getattr(getattr(cupy, "cuda", None), "memory", None), "OutOfMemoryError", None)
    return (MemoryError, oom) if isinstance(oom, type) else (MemoryError,)


def shuffle_rng(seed: int) -> np.random.Generator:
    """The host generator that orders the batches; its ``bit_generator.state`` goes into checkpoints."""
    return np.random.default_rng([int(seed), SHUFFLE_STREAM])


def write_plots(out, history, images, labels, predictions) -> None:
    """curves.png, confusion_matrix.png and samples.png for a finished run."""
    from . import plots  # matplotlib is imported only when figures are drawn
    from .metrics import confusion_matrix

    names = list(CLASS_NAMES)
    plots.plot_curves(history, out / "curves.png")
    plots.plot_confusion_matrix(
        confusion_matrix(labels, predictions, len(names)), names, out / "confusion_matrix.png"
    )
    plots.plot_samples(images, labels, predictions, names, out / "samples.png")

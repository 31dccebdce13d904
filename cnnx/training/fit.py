"""The training loop: seeded mini-batch epochs, evaluation, checkpoints, resume, stopping and the
divergence guard.

The dataset stays on the host as uint8; each batch is scaled and sent to the device on its own. Loss and
accuracy sums stay on the device and are read back every ``check_every`` batches, at checkpoints and at
the end of each epoch; those read-backs are where finiteness is checked, so a NaN costs no extra
synchronisation (except in skip mode, see :mod:`cnnx.training.divergence`). With a run directory, a
complete checkpoint (:mod:`cnnx.io.checkpoint`) is written at every epoch end, every ``checkpoint_every``
steps and when a stop is requested, and ``fit(..., resume=True)`` continues from it with the same result
as a run that never stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np  # host: batch order, read-back values and run records live on the host

from cnnx.checks import is_whole_number, plural
from cnnx.data import Augmenter, parse_augment
from cnnx.errors import ConfigError, DivergenceError, ResourceError, out_of_memory_errors
from cnnx.io.checkpoint import load_checkpoint
from cnnx.nn.random import derive_rng

from .config import DIVERGENCE_MODES, check_run
from .early import EarlyStopping, reported, split_validation
from .interrupt import TrainingInterrupted
from .loop import Run
from .progress import PROGRESS_MODES, Reporter
from .records import read_record, results, run_record
from .resume import restore
from .rundir import (
    CHECKPOINT,
    METRICS,
    check_run_dir,
    claim_run_dir,
    estimate_run_bytes,
    lock_run_dir,
    remove_stale_temporaries,
)
from .shapes import check_classifier, check_input_shape
from .step import evaluate

MAX_SKIPS = 20  # consecutive skipped steps after which skip mode gives up: the run is not coming back


def fit(model, optimizer, dataset, **options) -> list[dict]:
    """Train ``model`` on ``dataset`` and return the per-epoch history: :func:`train_run` with the same
    arguments, returning only the history."""
    return train_run(model, optimizer, dataset, **options).history


def train_run(
    model,
    optimizer,
    dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    out_dir=None,
    unique_dir: bool = False,
    progress: str = "auto",
    check_every: int = 50,
    checkpoint_every: int | None = None,
    on_divergence: str = "stop",
    max_steps: int | None = None,
    log_every: int | None = None,
    eval_every: int | None = None,
    schedule=None,
    clip_grad_norm: float | None = None,
    augment: str | None = None,
    validation: float | None = None,
    early_stopping: int | None = None,
    max_skips: int = MAX_SKIPS,
    stop=None,
    resume: bool = False,
    config: dict | None = None,
    on_start=None,
) -> Run:
    """Train ``model`` for ``epochs`` epochs on ``dataset``; returns the finished
    :class:`~cnnx.training.loop.Run` (its ``history``, and ``out``, the run directory actually used).

    Batches come in an order drawn from a host generator seeded with ``seed``, so every backend sees
    the same batches. Each history row holds ``epoch, train_loss, train_accuracy, test_loss,
    test_accuracy, skipped, seconds`` (the epoch's wall time, evaluation included).

    With ``out_dir``, ``metrics.json`` (whose ``status`` is running, completed, interrupted, diverged or
    failed) and the checkpoint ``model.npz`` are rewritten after every epoch, every ``checkpoint_every``
    steps and when stopping; the figures after the last epoch. The process holds the lock of
    ``out_dir`` (see :mod:`cnnx.training.rundir`) until the run ends. ``out_dir`` may be a dead run's
    claim (no checkpoint), begun again in place. ``resume=True`` continues the run in ``out_dir`` from
    its checkpoint: model and optimizer must be built as they were, ``batch_size`` and ``seed`` must
    match, and ``epochs`` may be raised. A run whose checkpoint is at its end but whose record is not
    completed (killed during its final evaluation or figures) is finished instead: evaluated, recorded
    and drawn, with no more training. Resuming a dead claim starts it again from scratch. ``config``
    entries (``limit``, ``device``, ...) are added to the recorded configuration. ``progress`` is
    "auto" (a bar on a terminal, else one line per epoch), "bar", "lines" or "none". With
    ``unique_dir`` (a generated ``out_dir`` name), a directory another run took first gets a numeric
    suffix instead of being an error. ``on_start(run)`` is called
    once the run directory is claimed and the record written, before the first step.

    ``max_steps`` ends the run after that many optimizer steps in all, in the middle of an epoch if need
    be (that epoch's history row then says how many ``batches`` it trained); ``epochs`` still caps it.
    ``log_every`` and ``eval_every`` draw step curves into ``metrics.json`` ``curves`` (and the
    checkpoint): the mean training loss of every ``log_every`` steps, and the test loss and accuracy
    every ``eval_every`` steps and at each epoch end. ``schedule`` (a
    :class:`cnnx.training.schedule.Schedule`) sets the learning rate before every step, from the step's
    number and the run's length; ``clip_grad_norm`` scales all gradients down together when their global
    norm exceeds it. ``augment`` (a spec, see :mod:`cnnx.data.augment`) transforms every training batch
    with draws from the run's own "augment" generator, whose state checkpoints keep. ``validation``
    holds a seeded, stratified fraction of the training set out and scores it every epoch; the best
    epoch's weights go to ``best.npz``, and ``early_stopping`` ends the run after that many epochs
    without a better validation loss.

    ``stop`` is polled once per step (any object with a ``requested`` attribute, see
    :class:`cnnx.training.interrupt.StopFlag`): when it is truthy, the step finishes, a checkpoint is
    written and :class:`TrainingInterrupted` is raised. A non-finite loss or gradient raises
    DivergenceError naming the epoch, batch and layer, keeping the last good checkpoint
    (``on_divergence="stop"``), or skips the step and counts it (``"skip"``, until ``max_skips`` steps
    in a row were skipped). Running out of memory raises :class:`ResourceError` naming the batch size.
    """
    _check_options(epochs, batch_size, check_every, checkpoint_every, max_skips, progress, on_divergence)
    for name, value in (("max_steps", max_steps), ("log_every", log_every), ("eval_every", eval_every)):
        if value is not None and (not is_whole_number(value) or value < 1):
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    check_classifier(model)
    check_input_shape(model, dataset.train_images)
    held = None
    if validation is not None:
        dataset, *held = split_validation(dataset, validation, seed)
    run = Run(model, optimizer, dataset, batch_size, check_every, checkpoint_every, on_divergence, max_skips)
    if held is not None:
        run.val_images, run.val_labels = held[0], np.asarray(held[1], np.int64)
        run.early = EarlyStopping(early_stopping)
    run.stop, run.max_steps, run.log_every, run.eval_every = stop, max_steps, log_every, eval_every
    run.schedule, run.clip = schedule, clip_grad_norm
    transforms = parse_augment(augment)
    if transforms:
        if len(model.input_shape) != 3:
            raise ConfigError(
                f"augment needs image inputs (C, H, W), and the model takes {model.input_shape}"
            )
        run.augmenter = Augmenter(transforms, derive_rng(seed, "augment"))
    if batch_size > len(run.images):
        raise ConfigError(
            f"batch size {batch_size} is larger than the training set ({plural(len(run.images), 'image')})"
        )
    check_run(epochs=epochs, batches=run.batches, max_steps=max_steps, schedule=schedule,
              checkpoint_every=checkpoint_every, writes_files=out_dir is not None)  # fmt: skip
    extra = {"check_every": check_every, "checkpoint_every": checkpoint_every, "on_divergence": on_divergence}
    extra.update(config or {})
    record = run_record(
        model, optimizer, dataset, epochs=epochs, batch_size=batch_size, seed=seed, extra=extra
    )
    _open_run(run, record, out_dir, resume=resume, unique=unique_dir, epochs=epochs, seed=seed,
              need_bytes=estimate_run_bytes(model, optimizer), changeable=tuple(extra))  # fmt: skip
    if on_start is not None:
        on_start(run)
    reporter = Reporter(progress, epochs, run.batches)
    # NumPy's overflow warnings would only repeat, less clearly, what the divergence guard reports.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            predictions = _evaluate_finished(run) if run.begun == "finishing" else run.train(epochs, reporter)
            if run.out is not None:  # a failure here is the run's too: resuming it draws them again
                run.write(run.out / "curves.png", lambda: write_plots(run, predictions))
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
        except out_of_memory_errors() as exc:
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
    run.finish("completed")
    return run


def _open_run(
    run: Run, record: dict, out_dir, *, resume, unique, epochs, seed, need_bytes, changeable
) -> None:
    """Take up the run's directory, and write its first record: lock and restore a run to resume (or,
    when its training had ended, to finish), or claim a new directory or a dead run's claim (also what
    resuming a run that left no checkpoint does: it starts again, from scratch). A first write that
    fails removes what claiming created. Without ``out_dir``, nothing is written. ``run.begun`` says
    which it was: "new", "restarted" (a dead claim begun again), "resumed" or "finishing"."""
    claim = None
    if resume and out_dir is None:
        raise ConfigError("resuming needs the run directory (out_dir) that holds the checkpoint")
    if resume and (Path(out_dir) / CHECKPOINT).is_file():
        run.out = check_run_dir(out_dir, need_bytes=need_bytes, resume=True)
        run.lock = lock_run_dir(run.out)  # before anything in the directory is deleted or written
        try:
            remove_stale_temporaries(run.out)
            record = _resumed_record(run, record, epochs, seed, changeable)
        except BaseException:
            run.lock.release()
            raise
    else:
        if resume:  # no checkpoint: a dead run's claim starts again; anything else is refused here
            check_run_dir(out_dir, need_bytes=need_bytes, resume=True)
            run.begun = "restarted"
        if out_dir is not None:
            claim = claim_run_dir(out_dir, need_bytes=need_bytes, unique=unique)
            run.out, run.lock = claim.path, claim.lock
        run.rng = shuffle_rng(seed)
    record["status"] = "running"
    record["curves"] = run.curves  # the run's own lists: every record written carries them as they grow
    run.record = record
    try:
        run.write_record()
    except BaseException:
        if claim is not None:
            claim.abandon()
        elif run.lock is not None:
            run.lock.release()
        raise


def _resumed_record(run: Run, record: dict, epochs: int, seed: int, changeable: tuple) -> dict:
    """Restore ``run`` from its checkpoint; returns its record, updated for this resumption (the
    ``changeable`` settings, besides epochs, learning rate and device, from ``record``)."""
    previous = read_record(run.out / METRICS)
    unfinished = previous is None or previous.get("status") != "completed"
    restore(run, load_checkpoint(run.out / CHECKPOINT), epochs, seed, unfinished=unfinished)
    if unfinished and run.batch_done == 0 and (run.epoch_done >= epochs or run.steps_done()
                                               or _stopped_early(run)):  # fmt: skip
        run.begun = "finishing"  # killed after its last checkpoint: evaluation, figures and status left
    else:
        run.begun = "resumed"
    previous = previous or record
    for key in ("error", "stopped_at"):
        previous.pop(key, None)
    # The recorded settings stay; what may change on resuming (epochs, device, learning rate,
    # intervals) is updated.
    changeable = ("epochs", "lr", "device", "backend", "device_description", *changeable)
    previous["config"].update({k: record["config"][k] for k in changeable})
    previous["resumes"] = previous.get("resumes", 0) + 1
    return previous


def _stopped_early(run: Run) -> bool:
    early = run.early
    return early is not None and early.patience is not None and early.waited >= early.patience


def _evaluate_finished(run: Run) -> np.ndarray:
    """For a run whose training had ended before its process was killed: the test predictions of its
    last weights, and the results they give, in its record."""
    _, _, predictions = evaluate(run.model, run.test_images, run.test_labels, run.batch_size)
    shown, run.results_of = reported(run, predictions)  # best.npz's, when the run kept it
    run.record.update(results(run.history, run.test_labels, shown, run.num_classes, run.class_names,
                              run.results_of))  # fmt: skip
    return shown


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


def shuffle_rng(seed: int) -> np.random.Generator:
    """The host generator that orders the batches (the run's "shuffle" stream); its state goes into
    checkpoints."""
    return derive_rng(seed, "shuffle")


def write_plots(run: Run, predictions) -> None:
    """The figures of a finished run: see :func:`cnnx.training.plots.plot_run`."""
    from . import plots  # matplotlib is imported only when figures are drawn

    plots.plot_run(run, predictions)

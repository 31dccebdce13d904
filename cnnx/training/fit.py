"""The training loop's entry: :func:`train_as_configured` trains built model and optimizer on data as a
RunConfig says, and :func:`fit` / :func:`train_run` are the same for keyword settings.

The dataset stays on the host as uint8; each batch is scaled and sent to the device on its own. Loss and
accuracy sums stay on the device and are read back every ``check_every`` batches, at checkpoints and at
the end of each epoch; those read-backs are where finiteness is checked, so a NaN costs no extra
synchronisation (except in skip mode, see :mod:`cnnx.training.divergence`). With a run directory, a
complete checkpoint (:mod:`cnnx.io.checkpoint`) is written at every epoch end, every ``checkpoint_every``
steps and when a stop is requested, and ``fit(..., resume=True)`` continues from it with the same result
as a run that never stopped.
"""

from __future__ import annotations

import numpy as np  # host: NumPy's floating-point warnings

from cnnx.checks import is_whole_number
from cnnx.errors import ConfigError, DivergenceError, ResourceError, out_of_memory_errors

from .config import DIVERGENCE_MODES, RunConfig
from .interrupt import TrainingInterrupted
from .loop import CHECK_EVERY, MAX_SKIPS, Run
from .progress import PROGRESS_MODES, Reporter
from .ranks import check_same_everywhere
from .runfiles import shuffle_rng

__all__ = ["DIVERGENCE_MODES", "MAX_SKIPS", "fit", "shuffle_rng", "train_as_configured", "train_run"]


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
    out_dir=None,
    unique_dir: bool = False,
    progress="auto",
    check_every: int = CHECK_EVERY,
    max_skips: int = MAX_SKIPS,
    schedule=None,
    stop=None,
    resume: bool = False,
    config: dict | None = None,
    on_start=None,
    **settings,
) -> Run:
    """Train ``model`` for ``epochs`` epochs on ``dataset``; returns the finished
    :class:`~cnnx.training.loop.Run` (its ``history``, and ``out``, the run directory actually used).

    ``settings`` are RunConfig fields that say how to train (``batch_size``, ``seed``,
    ``checkpoint_every``, ``on_divergence``, ``max_steps``, ``log_every``, ``eval_every``,
    ``clip_grad_norm``, ``augment``, ``validation``, ``early_stopping``, the schedule's fields, ...; see
    :class:`~cnnx.training.RunConfig`), checked as RunConfig checks them; the model and optimizer are
    given built. ``schedule`` (a :class:`cnnx.optim.Schedule`) may say the schedule instead of its
    fields; its base rate is the optimizer's. ``config`` entries (``limit``, ``device``, ...) are added
    to the recorded configuration. The rest is :func:`train_as_configured`'s.
    """
    if schedule is not None:  # the schedule's own fields, as RunConfig spells them
        settings.update(lr_schedule=schedule.name, warmup_steps=schedule.warmup)
        if schedule.name == "step":
            settings.update(lr_step_every=schedule.step_every, lr_gamma=schedule.gamma)
    run_config = RunConfig(epochs=epochs, **settings)
    return train_as_configured(model, optimizer, dataset, run_config, out_dir, recorded=config or {},
                               unique_dir=unique_dir, progress=progress, check_every=check_every,
                               max_skips=max_skips, stop=stop, resume=resume, on_start=on_start)  # fmt: skip


def train_as_configured(
    model,
    optimizer,
    dataset,
    config: RunConfig,
    out_dir=None,
    *,
    recorded: dict,
    unique_dir: bool = False,
    progress: str = "auto",
    check_every: int = CHECK_EVERY,
    max_skips: int = MAX_SKIPS,
    stop=None,
    resume: bool = False,
    on_start=None,
) -> Run:
    """Train ``model`` with ``optimizer`` on ``dataset`` as ``config`` says (its model and optimizer
    fields aside: those are built); returns the finished :class:`~cnnx.training.loop.Run`.

    Batches come in an order drawn from a host generator seeded with ``config.seed``, so every backend
    sees the same batches. Each history row holds ``epoch, train_loss, train_accuracy, test_loss,
    test_accuracy, skipped, seconds`` (the epoch's wall time, evaluation included).

    With ``out_dir``, ``metrics.json`` (whose ``status`` is running, completed, interrupted, diverged or
    failed; its configuration updated with ``recorded``) and the checkpoint ``model.npz`` are rewritten
    after every epoch, every ``checkpoint_every`` steps and when stopping; the figures after the last
    epoch. The process holds the lock of ``out_dir`` (see :mod:`cnnx.training.rundir`) until the run
    ends. ``out_dir`` may be a dead run's claim (no checkpoint), begun again in place. ``resume=True``
    continues the run in ``out_dir`` from its checkpoint: model and optimizer must be built as they
    were, ``batch_size`` and ``seed`` must match, and ``epochs`` may be raised. A run whose checkpoint
    is at its end but whose record is not completed (killed during its final evaluation or figures) is
    finished instead: evaluated, recorded and drawn, with no more training. Resuming a dead claim starts
    it again from scratch. ``progress`` is "auto" (a bar on a terminal, else one line per epoch), "bar",
    "lines" or "none". With ``unique_dir`` (a generated ``out_dir`` name), a directory another run took
    first gets a numeric suffix instead of being an error. ``on_start(run)`` is called once the run
    directory is claimed and the record written, before the first step.

    ``stop`` is polled once per step (any object with a ``requested`` attribute, see
    :class:`cnnx.training.interrupt.StopFlag`): when it is truthy, the step finishes, a checkpoint is
    written and :class:`TrainingInterrupted` is raised. A non-finite loss or gradient raises
    DivergenceError naming the epoch, batch and layer, keeping the last good checkpoint
    (``on_divergence="stop"``), or skips the step and counts it (``"skip"``, until ``max_skips`` steps
    in a row were skipped; the loss is read back every ``check_every`` batches). Running out of memory
    raises :class:`ResourceError` naming the batch size.
    """
    _check_options(progress, check_every, max_skips)
    run = Run(model, optimizer, dataset, config, out_dir, check_every=check_every, max_skips=max_skips)
    run.open(recorded, resume=resume, unique=unique_dir)
    if on_start is not None:
        on_start(run)
    # Under mpiexec rank 0 reports for every rank.
    _train_and_record(run, Reporter(progress if run.writes else "none", config.epochs, run.batches), stop)
    return run


def _train_and_record(run: Run, reporter: Reporter, stop) -> None:
    """Train ``run`` (or, when its training had ended, only evaluate it), draw its figures and record how
    it ended, whatever ends it."""
    # NumPy's overflow warnings would only repeat, less clearly, what the divergence guard reports.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            check_same_everywhere(run)  # under mpiexec: every rank's settings, data and state are rank 0's
            predictions = (
                run.results_without_training() if run.begun == "finishing" else run.train(reporter, stop)
            )
            if run.out is not None:  # a failure here is the run's too: resuming it draws them again
                run.write(run.out / "curves.png", lambda: write_plots(run, predictions))
        except BaseException as exc:
            _record_failure(run, exc)
            if isinstance(exc, out_of_memory_errors()):
                raise _out_of_memory(run, exc) from None
            raise
        finally:
            reporter.close()
    run.finish("completed")


def _record_failure(run: Run, exc: BaseException) -> None:
    """Record in the run's files how ``exc`` ended it."""
    if isinstance(exc, TrainingInterrupted):
        run.finish("interrupted", stopped_at={"epoch": exc.epoch, "batch": exc.batch, "reason": exc.reason})
    elif isinstance(exc, (DivergenceError, ResourceError)):
        run.finish("diverged" if isinstance(exc, DivergenceError) else "failed", error=str(exc))
    elif isinstance(exc, KeyboardInterrupt):
        run.finish("interrupted", error="stopped at once, without a new checkpoint")
    elif isinstance(exc, out_of_memory_errors()):
        run.finish("failed", error=str(_out_of_memory(run, exc)))
    else:
        run.finish("failed", error=f"{type(exc).__name__}: {exc}")


def _out_of_memory(run: Run, exc: BaseException) -> ResourceError:
    """Running out of memory (``exc``) as the user sees it: a ResourceError naming the batch size."""
    size = run.batch_size
    return ResourceError(
        f"out of memory training with batch size {size} on {run.model.backend.describe()} "
        f"({type(exc).__name__}): try a smaller one, e.g. --batch-size {max(1, size // 2)}"
    )


def _check_options(progress: str, check_every, max_skips) -> None:
    for name, value in (("check interval", check_every), ("max_skips", max_skips)):
        if not is_whole_number(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"unknown progress mode {progress!r}: choose one of {', '.join(PROGRESS_MODES)}")


def write_plots(run: Run, predictions) -> None:
    """The figures of a finished run: see :func:`cnnx.training.plots.plot_run`."""
    from . import plots  # matplotlib is imported only when figures are drawn

    plots.plot_run(run, predictions)

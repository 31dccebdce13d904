"""A run's directory, as :class:`~cnnx.training.loop.Run` sees it (:class:`RunFiles`, its base): taking
the directory up (a new claim, a dead run's claim begun again, or a run resumed from its checkpoint),
writing checkpoints and records, and recording how the run ended."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np  # host: the batch order's generator

from cnnx.errors import CheckpointError, CnnxError, ConfigError, DivergenceError, ResourceError
from cnnx.io.checkpoint import check_optimizer_state, load_checkpoint, save_checkpoint
from cnnx.nn.random import derive_rng

from .divergence import check_weights
from .names import CHECKPOINT, METRICS
from .ranks import place_record, writes
from .records import read_record, run_record, write_json
from .resume import check_resumable, set_generator_state
from .rundir import check_run_dir, claim_run_dir, estimate_run_bytes, lock_run_dir, remove_stale_temporaries


def fresh_partial() -> dict:
    """The host sums of an epoch's finished batches, as a checkpoint stores them (with the training-loss
    sum and image count of the step curve's open window)."""
    return {"loss_sum": 0.0, "correct": 0, "counted": 0, "skipped": 0, "seconds": 0.0, "window_loss": 0.0,
            "window_count": 0}  # fmt: skip


def fresh_curves() -> dict:
    """Step curves: ``train`` rows [step, mean training loss of the last log_every steps], ``test`` rows
    [step, test loss, test accuracy]; a value that is not finite is None."""
    return {"train": [], "test": []}


def shuffle_rng(seed: int):
    """The host generator that orders the batches (the run's "shuffle" stream); its state goes into
    checkpoints."""
    return derive_rng(seed, "shuffle")


class RunFiles:
    """The run directory's side of a run: ``out`` (None until :meth:`open`, and without a directory),
    its ``lock``, its ``record`` and how it was taken up (``begun``: "new", "restarted" (a dead claim
    begun again), "resumed" or "finishing"). Under ``mpiexec`` only rank 0 writes (``writes``); the other
    ranks read the checkpoint they resume from, and their ``out`` stays None."""

    def __init__(self, out=None):
        self.wanted = None if out is None else Path(out)
        self.out = self.lock = self.record = None
        self.begun = "new"
        self.writes = writes()

    def open(self, recorded: dict, *, resume: bool = False, unique: bool = False) -> None:
        """Take up the run's directory, and write its first record (the configuration ``run_record``
        gives, updated with ``recorded``): lock and restore a run to resume (or, when its training had
        ended, to finish), or claim a new directory or a dead run's claim (also what resuming a run that
        left no checkpoint does: it starts again, from scratch). A first write that fails removes what
        claiming created. Without a directory, nothing is written. ``unique``: a directory another run
        took first gets a numeric suffix (a generated name)."""
        config, claim = self.config, None
        extra = {"check_every": self.check_every, "checkpoint_every": config.checkpoint_every,
                 "on_divergence": config.on_divergence, **recorded}  # fmt: skip
        record = run_record(self.model, self.optimizer, self.data, epochs=config.epochs,
                            batch_size=config.batch_size, seed=config.seed, extra=extra)  # fmt: skip
        need_bytes = estimate_run_bytes(self.model, self.optimizer)
        if resume and self.wanted is None:
            raise ConfigError("resuming needs the run directory (out_dir) that holds the checkpoint")
        if not self.writes:
            self._follow(record, resume)
            return
        if resume and (self.wanted / CHECKPOINT).is_file():
            self.out = check_run_dir(self.wanted, need_bytes=need_bytes, resume=True)
            self.lock = lock_run_dir(self.out)  # before anything in the directory is deleted or written
            try:
                remove_stale_temporaries(self.out)
                record = self._resumed_record(record, tuple(extra))
            except BaseException:
                self.lock.release()
                raise
        else:
            if resume:  # no checkpoint: a dead run's claim starts again; anything else is refused here
                check_run_dir(self.wanted, need_bytes=need_bytes, resume=True)
                self.begun = "restarted"
            if self.wanted is not None:
                claim = claim_run_dir(self.wanted, need_bytes=need_bytes, unique=unique)
                self.out, self.lock = claim.path, claim.lock
            self.rng = shuffle_rng(config.seed)
        self._first_record(record, claim)

    def _follow(self, record: dict, resume: bool) -> None:
        """An MPI rank but the first: restore what rank 0 resumes (the same checkpoint, read while rank 0
        holds the directory's lock), or start afresh as rank 0 does; write nothing."""
        self.record = record
        if resume and (self.wanted / CHECKPOINT).is_file():
            self._restore_from(self.wanted)
        else:
            self.begun = "restarted" if resume else "new"
            self.rng = shuffle_rng(self.config.seed)

    def _first_record(self, record: dict, claim) -> None:
        record["status"] = "running"
        if place_record() is not None:
            record["mpi"] = place_record()
        record["curves"] = self.curves  # the run's own lists: every record written carries them as they grow
        self.record = record
        try:
            self.write_record()
        except BaseException:
            if claim is not None:
                claim.abandon()
            elif self.lock is not None:
                self.lock.release()
            raise

    def _resumed_record(self, record: dict, changeable: tuple) -> dict:
        """Restore the run from its checkpoint; returns its record, updated for this resumption (the
        ``changeable`` settings, besides epochs, learning rate and device, from ``record``)."""
        previous = self._restore_from(self.out) or record
        for key in ("error", "stopped_at"):
            previous.pop(key, None)
        # The recorded settings stay; what may change on resuming (epochs, device, learning rate,
        # intervals) is updated.
        changeable = ("epochs", "lr", "device", "backend", "device_description", *changeable)
        previous["config"].update({k: record["config"][k] for k in changeable})
        previous["resumes"] = previous.get("resumes", 0) + 1
        return previous

    def _restore_from(self, directory: Path) -> dict | None:
        """Restore the run from the checkpoint in ``directory`` and say how it is taken up (``begun``);
        returns the directory's record (None when it has none)."""
        previous = read_record(directory / METRICS)
        unfinished = previous is None or previous.get("status") != "completed"
        self.restore(load_checkpoint(directory / CHECKPOINT), unfinished=unfinished)
        ended = self.epoch_done >= self.config.epochs or self.steps_done() or self.stopped_early()
        # Killed after its last checkpoint: evaluation, figures and status are left to do.
        self.begun = "finishing" if unfinished and self.batch_done == 0 and ended else "resumed"
        return previous

    def restore(self, checkpoint, unfinished: bool = False) -> None:
        """Load the checkpoint's weights, optimizer state, layer buffers, random streams and position,
        after :func:`~cnnx.training.resume.check_resumable`."""
        check_resumable(self, checkpoint, unfinished)
        meta, path = checkpoint.meta, checkpoint.path
        try:
            self.model.load_state_dict(checkpoint.model_state)  # weights, buffers and random streams
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        state = check_optimizer_state(checkpoint.optimizer_state, self.optimizer, path)
        self.optimizer.load_state_dict(state, self.backend.to_device)
        self.rng = set_generator_state(
            np.random.default_rng(), meta["rng_state"], path, "the shuffle generator"
        )
        self.epoch_done, self.batch_done, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.history, self.partial = list(meta["history"]), {**fresh_partial(), **meta["partial"]}
        self.curves = {**fresh_curves(), **meta.get("curves", {})}
        if self.early is not None:
            self.early.load(meta.get("early", {}))
        if self.augmenter is not None:
            if "augment_rng_state" not in meta:
                raise ConfigError(f"cannot resume {path}: it was trained without augmentation")
            set_generator_state(
                self.augmenter.rng, meta["augment_rng_state"], path, "the augmentation generator"
            )

    def checkpoint_path(self):
        return None if self.out is None else self.out / CHECKPOINT

    def last_good(self) -> str:
        if self.out is None:
            return "no checkpoint is being written"
        path = self.out / CHECKPOINT
        return f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written yet"

    def save(self, rng_state: dict) -> None:
        """Write the checkpoint for the current position (its weights checked finite first)."""
        meta = {"epoch": self.epoch_done, "batch": self.batch_done, "step": self.step, "rng_state": rng_state,
                "history": self.history, "partial": self.partial, "settings": self.record["config"],
                "optimizer": self.optimizer.config(), "curves": self.curves}  # fmt: skip
        if self.augmenter is not None:
            meta["augment_rng_state"] = self.augmenter.rng.bit_generator.state
        if self.early is not None:
            meta["early"] = self.early.state()
        try:
            check_weights(self.model)
            self.write(self.out / CHECKPOINT, lambda: save_checkpoint(self.out / CHECKPOINT, self.model,
                                                                      self.optimizer, meta))  # fmt: skip
        except DivergenceError:
            # A gradient went bad while the loss stayed finite: find the step and layer, then report.
            no_bad_loss = self.xp.zeros((), dtype="int64")
            self.check_finite(math.nan, no_bad_loss, self.batch_done or self.batches)
            raise

    def write(self, path, action) -> None:
        """Run a file-writing ``action``; an OSError (a full disk) becomes a one-line ResourceError."""
        try:
            action()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ResourceError(f"could not write {path} ({reason}); {self.last_good()}") from None

    def write_record(self) -> None:
        if self.record is not None:
            self.record["steps_done"] = self.step
        if self.out is not None:
            self.write(self.out / METRICS, lambda: write_json(self.out / METRICS, self.record))

    def finish(self, status: str, **fields) -> None:
        """Record how the run ended, then let go of the run directory's lock; a record that cannot be
        written must not hide the real error."""
        if self.out is None:
            return
        self.record.update(status=status, steps_done=self.step, **fields)
        with contextlib.suppress(OSError, CnnxError):
            write_json(self.out / METRICS, self.record)
        if self.lock is not None:
            self.lock.release()

"""One training run's state and epoch loop, behind :func:`cnnx.training.fit`: where the run stands (epochs,
batches, steps, the partial epoch's sums), resuming from a checkpoint, writing checkpoints and records,
stopping on request, and the divergence guard's replay and skip bookkeeping.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np  # host: batch order, read-back values and run records live on the host

from cnnx.checks import plural
from cnnx.data import class_names, model_inputs
from cnnx.errors import CnnxError, DataError, DivergenceError, ResourceError
from cnnx.io.checkpoint import save_checkpoint

from .divergence import Snapshot, check_weights, checked_step
from .early import reported
from .interrupt import TrainingInterrupted
from .names import BEST, CHECKPOINT, METRICS
from .progress import Reporter, stopped_early
from .records import results, write_json
from .step import evaluate, train_step


def fresh_partial() -> dict:
    """The host sums of an epoch's finished batches, as a checkpoint stores them (with the training-loss
    sum and image count of the step curve's open window)."""
    return {"loss_sum": 0.0, "correct": 0, "counted": 0, "skipped": 0, "seconds": 0.0, "window_loss": 0.0,
            "window_count": 0}  # fmt: skip


def fresh_curves() -> dict:
    """Step curves: ``train`` rows [step, mean training loss of the last log_every steps], ``test`` rows
    [step, test loss, test accuracy]; a value that is not finite is None."""
    return {"train": [], "test": []}


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


class Run:
    """The state of one training run: model, optimizer, host data, where it stands, where it writes."""

    def __init__(self, model, optimizer, dataset, batch_size, check_every, checkpoint_every, mode, max_skips):
        self.model, self.optimizer = model, optimizer
        self.backend, self.xp = model.backend, model.xp
        self.batch_size, self.check_every, self.checkpoint_every = batch_size, check_every, checkpoint_every
        self.skip, self.max_skips = mode == "skip", max_skips
        self.images, self.test_images = dataset.train_images, dataset.test_images
        self.labels = np.asarray(dataset.train_labels, np.int64)
        self.test_labels = np.asarray(dataset.test_labels, np.int64)
        self.num_classes = model.output_shapes()[-1][0]
        self.class_names = class_names(dataset, self.num_classes)
        for name, values in (("training", self.labels), ("test", self.test_labels)):
            if len(values) and (values.min() < 0 or values.max() >= self.num_classes):
                raise DataError(f"{name} labels must lie in [0, {self.num_classes}), found "
                                f"{values.min()}..{values.max()}")  # fmt: skip
        if len(self.images) == 0:
            raise DataError("the training set is empty")
        self.batches = -(-len(self.images) // batch_size)
        # Where the run stands: epochs completed, batches done of the next one (with their host sums),
        # steps taken, the history, and the shuffle generator before the next epoch's permutation.
        self.epoch_done, self.batch_done, self.step, self.history = 0, 0, 0, []
        self.partial = fresh_partial()
        self.rng = None
        self.consecutive_skips = 0
        self.snapshot = None if self.skip else Snapshot(model, optimizer)  # skip mode never updates badly
        self.stop, self.stopping, self.out, self.record = None, None, None, None
        self.lock, self.begun = None, "new"  # the directory's RunLock; how fit._open_run took the run up
        # Step-level settings (RunConfig's max_steps, log_every, eval_every) and the curves they draw.
        self.max_steps = self.log_every = self.eval_every = self.schedule = self.clip = None
        self.augmenter = None  # a cnnx.data.Augmenter for the training batches, with its own generator
        self.val_images = self.val_labels = self.early = None  # the validation split and early stopping
        self.results_of = None  # which weights the results describe: {"file": ..., "epoch": ...}
        self.total_steps = 0  # the run's length in steps, for the schedule
        self.curves = fresh_curves()
        self.current = None  # (epoch, its batch order, the step number of its batch 0) while it runs

    # -- resuming -------------------------------------------------------------------------------

    # -- training -------------------------------------------------------------------------------

    def train(self, epochs: int, reporter: Reporter) -> np.ndarray | None:
        """Train the remaining epochs; returns the test predictions of the weights the run reports, which
        ``results_of`` names (see :func:`cnnx.training.early.reported`)."""
        predictions = None
        self.total_steps = epochs * self.batches
        if self.max_steps is not None:
            self.total_steps = min(self.max_steps, self.total_steps)
        for epoch in range(self.epoch_done + 1, epochs + 1):
            with self.model.backend.parallel_region():  # the pool's threads for the epoch (NumpyBackend)
                row, predictions = self.epoch(epoch, reporter)
            self.history.append(row)
            self.epoch_done, self.batch_done, self.partial = epoch, 0, fresh_partial()
            reporter.end(row)
            stop_early = self.watch_validation(epoch, row, predictions, reporter)
            if self.out is not None:
                self.save(self.rng.bit_generator.state)
                shown, self.results_of = reported(self, predictions)  # best.npz's, when the run kept it
                self.record.update(results(self.history, self.test_labels, shown, self.num_classes,
                                           self.class_names, self.results_of))  # fmt: skip
                self.write_record()
            if self.steps_done() or stop_early:
                break
            if self.stopping and epoch < epochs:
                raise TrainingInterrupted(self.stopping, self.checkpoint_path(), epoch + 1, 0)
        shown, self.results_of = reported(self, predictions)
        return shown

    def watch_validation(self, epoch: int, row: dict, predictions: np.ndarray, reporter: Reporter) -> bool:
        """Keep the best epoch's weights in best.npz (and its test predictions); True (said on the
        console) when early stopping ends the run here."""
        if self.early is None:
            return False
        loss = row["val_loss"] if row["val_loss"] is not None else math.inf
        improved, stop = self.early.update(epoch, loss, predictions)
        if improved and self.out is not None:
            meta = {"kind": "best", "epoch": epoch, "val_loss": loss}
            self.write(self.out / BEST, lambda: self.model.save(self.out / BEST, meta=meta))
            self.record["best"] = {"file": BEST, "epoch": epoch, "val_loss": loss}
        if stop:
            reporter.say(stopped_early(epoch, self.early))
            self.record["stopped_early"] = {"epoch": epoch, "best_epoch": self.early.best_epoch}
        return stop

    def steps_done(self) -> bool:
        """Whether the run has taken its ``max_steps`` optimizer steps."""
        return self.max_steps is not None and self.step >= self.max_steps

    def epoch(self, epoch: int, reporter: Reporter) -> tuple[dict, np.ndarray]:
        """Train on the epoch's batches (those not done yet, when resumed), then evaluate: (history row,
        test predictions)."""
        backend, xp, model = self.backend, self.xp, self.model
        started = time.perf_counter()
        rng_before = self.rng.bit_generator.state
        order = self.rng.permutation(len(self.images))
        done, p = self.batch_done, self.partial
        base_step = self.step - done  # the global step number of this epoch's batch 0
        loss_sum = backend.to_device(np.array(p["loss_sum"], np.float64), "float64")
        correct = backend.to_device(np.array(p["correct"], np.int64), "int64")
        counted, skipped = p["counted"], p["skipped"]
        window = backend.to_device(np.array(p["window_loss"], np.float64), "float64")  # the step curve's
        window_count = p["window_count"]
        last = done  # the last batch trained (fewer than self.batches when max_steps ends the epoch early)
        first_bad = xp.zeros((), dtype="int64")  # 1-based index of the first non-finite batch; 0: none
        if self.snapshot is not None:
            self.snapshot.take(done)
        self.current = (epoch, order, base_step)
        reporter.start(epoch, done)
        for batch in range(done + 1, self.batches + 1):
            if self.steps_done():
                break
            last = batch
            x, y = self.batch(order, batch)
            if self.schedule is not None:
                self.optimizer.lr = self.schedule.rate(self.step, self.total_steps)
            outcome = train_step(model, self.optimizer, x, y, skip_nonfinite=self.skip, clip=self.clip)
            self.step += 1
            if outcome is None:
                skipped += 1
                self.skipped_step(epoch, batch, base_step + batch, x, y, reporter)
            else:
                self.consecutive_skips = 0
                loss_sum += outcome[0]
                correct += outcome[1]
                counted += len(x)
                window += outcome[0]
                window_count += len(x)
                first_bad += (~xp.isfinite(outcome[0]) & (first_bad == 0)) * batch  # stays on the device
            if self.log_every is not None and self.step % self.log_every == 0:
                mean = float(backend.to_host(window)) / window_count if window_count else math.nan
                self.curves["train"].append([self.step, _finite_or_none(mean)])
                window, window_count = xp.zeros((), dtype="float64"), 0
            if self.eval_every is not None and self.step % self.eval_every == 0:
                self.evaluate_now()
            text = None
            if batch % self.check_every == 0 and batch < self.batches:
                running = float(backend.to_host(loss_sum)) / max(counted, 1)
                self.check_finite(running, first_bad, epoch, order, base_step, batch)
                if self.snapshot is not None:
                    self.snapshot.take(batch)
                text = f"loss {running:.4f}"
            reporter.advance(text)
            self.stopping = self.stop.requested if self.stop is not None else None
            periodic = self.checkpoint_every is not None and self.step % self.checkpoint_every == 0
            if batch < self.batches and (self.stopping or (periodic and self.out is not None)):
                total = float(backend.to_host(loss_sum))
                self.check_finite(total, first_bad, epoch, order, base_step, batch)
                self.batch_done = batch
                self.partial = {
                    "loss_sum": total,
                    "correct": int(backend.to_host(correct)),
                    "counted": counted,
                    "skipped": skipped,
                    "seconds": p["seconds"] + time.perf_counter() - started,
                    "window_loss": float(backend.to_host(window)),
                    "window_count": window_count,
                }
                if self.out is not None:
                    self.save(rng_before)
                if self.stopping:
                    raise TrainingInterrupted(self.stopping, self.checkpoint_path(), epoch, batch)
        if counted == 0:
            raise DivergenceError(
                f"training diverged: every step of epoch {epoch} was skipped; {self.last_good()}"
            )
        train_loss = float(backend.to_host(loss_sum)) / counted
        self.check_finite(train_loss, first_bad, epoch, order, base_step, last)
        train_accuracy = int(backend.to_host(correct)) / counted
        test_loss, test_accuracy, predictions = evaluate(
            model, self.test_images, self.test_labels, self.batch_size
        )
        if len(self.test_labels) and not math.isfinite(test_loss):
            raise DivergenceError(f"the test loss is not finite after epoch {epoch}; {self.last_good()}")
        backend.synchronize()
        seconds = p["seconds"] + time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
               "test_loss": test_loss, "test_accuracy": test_accuracy, "skipped": skipped,
               "seconds": seconds}  # fmt: skip
        if last < self.batches:  # max_steps ended the epoch early
            row["batches"] = last
        if self.val_images is not None:
            val_loss, val_accuracy, _ = evaluate(model, self.val_images, self.val_labels, self.batch_size)
            row["val_loss"], row["val_accuracy"] = _finite_or_none(val_loss), val_accuracy
        if self.eval_every is not None and (
            not self.curves["test"] or self.curves["test"][-1][0] != self.step
        ):
            self.curves["test"].append([self.step, _finite_or_none(test_loss), test_accuracy])
        return row, predictions

    def evaluate_now(self) -> None:
        """A point of the test curve at the current step; the record is rewritten with it, so a run
        that dies keeps its curves up to there."""
        loss, accuracy, _ = evaluate(self.model, self.test_images, self.test_labels, self.batch_size)
        self.curves["test"].append([self.step, _finite_or_none(loss), accuracy])
        self.write_record()

    def batch(self, order: np.ndarray, batch: int):
        """The device arrays of the 1-based ``batch`` of an epoch ordered by ``order``."""
        index = order[(batch - 1) * self.batch_size : batch * self.batch_size]
        host = model_inputs(self.images[index], self.model.dtype, self.model.input_shape)
        if self.augmenter is not None:  # host work, cut over the CPU backend's threads in its region
            host = self.augmenter(host, split=self.backend.split_batch)
        x = self.backend.to_device(host, self.model.dtype)
        return x, self.backend.to_device(self.labels[index], "int64")

    # -- divergence -----------------------------------------------------------------------------

    def check_finite(self, value: float, first_bad, epoch: int, order, base_step: int, upto: int) -> None:
        """Raise DivergenceError, naming where it started, if the read-back ``value`` is not finite."""
        if math.isfinite(value):
            return
        found = None
        if self.snapshot is not None and self.snapshot.batch is not None:
            # Replay from the last state known good, checking every value, to find the first bad one.
            self.snapshot.restore()
            for batch in range(self.snapshot.batch + 1, upto + 1):
                where = checked_step(self.model, self.optimizer, *self.batch(order, batch))
                if where is not None:
                    found = (batch, where)
                    break
        if found is None:
            bad = int(self.backend.to_host(first_bad))
            found = (bad, "the loss (a replay of the batch stayed finite)") if bad else None
        at = f"epoch {epoch}"
        if found is not None:
            at += f", batch {found[0]} (step {base_step + found[0]}): non-finite values first in {found[1]}"
        raise DivergenceError(
            f"training diverged at {at} (learning rate {self.optimizer.lr:g}); {self.last_good()}"
        )

    def skipped_step(self, epoch: int, batch: int, step: int, x, y, reporter: Reporter) -> None:
        """Report a skipped step (naming the layer) and give up after ``max_skips`` in a row."""
        self.consecutive_skips += 1
        where = checked_step(self.model, self.optimizer, x, y, update=False) or "a value (not on a replay)"
        at = f"epoch {epoch}, batch {batch} (step {step}): non-finite values first in {where}"
        if self.consecutive_skips >= self.max_skips:
            raise DivergenceError(
                f"training diverged: {plural(self.consecutive_skips, 'step')} in a row skipped, the last "
                f"at {at}; {self.last_good()}"
            )
        reporter.note(f"skipped {at}")

    # -- files ----------------------------------------------------------------------------------

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
            epoch, order, base_step = self.current
            no_bad_loss = self.xp.zeros((), dtype="int64")
            self.check_finite(math.nan, no_bad_loss, epoch, order, base_step, self.batch_done or self.batches)
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

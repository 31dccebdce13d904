"""One training run: :class:`Run`, built from (model, optimizer, data, config, out), holds where the run
stands (epochs, batches, steps, the partial epoch's sums) and trains its epochs: the batches, the step
curves, checkpoints mid-epoch, stopping on request, and the divergence guard's replay and skip
bookkeeping. Its run directory's side (claiming or resuming it, checkpoints, records) is
:class:`~cnnx.training.runfiles.RunFiles`'.
"""

from __future__ import annotations

import math
import time

import numpy as np  # host: batch order, read-back values and run records live on the host

from cnnx.checks import plural
from cnnx.data import Augmenter, class_names, model_inputs, parse_augment
from cnnx.errors import ConfigError, DataError, DivergenceError
from cnnx.nn.parallel import data_parallel
from cnnx.nn.random import derive_rng
from cnnx.optim import Schedule

from .config import RunConfig, check_run
from .divergence import Snapshot, checked_step
from .early import EarlyStopping, reported, split_validation
from .interrupt import TrainingInterrupted
from .names import BEST
from .progress import Reporter, stopped_early
from .records import results
from .runfiles import RunFiles, fresh_curves, fresh_partial
from .shapes import check_classifier, check_input_shape
from .step import evaluate, train_step

CHECK_EVERY = 50  # batches between two read-backs of the running loss (the divergence guard's look)
MAX_SKIPS = 20  # consecutive skipped steps after which skip mode gives up: the run is not coming back


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


class EpochSums:
    """An epoch's running sums, from its checkpointed part (``partial``) on: the loss and the correct
    answers on the device, the images counted and steps skipped on the host, the step curve's open
    window, and the 1-based index of the first batch whose loss was not finite (0: none yet)."""

    def __init__(self, backend, partial: dict):
        self.backend, xp = backend, backend.xp
        self.loss = backend.to_device(np.array(partial["loss_sum"], np.float64), "float64")
        self.correct = backend.to_device(np.array(partial["correct"], np.int64), "int64")
        self.counted, self.skipped, self.seconds = partial["counted"], partial["skipped"], partial["seconds"]
        self.window = backend.to_device(np.array(partial["window_loss"], np.float64), "float64")
        self.window_count = partial["window_count"]
        self.first_bad = xp.zeros((), dtype="int64")

    def add(self, outcome, images: int, batch: int) -> None:
        """A trained batch's (loss sum, correct count), on the device: nothing is read back."""
        self.loss += outcome[0]
        self.correct += outcome[1]
        self.counted += images
        self.window += outcome[0]
        self.window_count += images
        self.first_bad += (~self.backend.xp.isfinite(outcome[0]) & (self.first_bad == 0)) * batch

    def close_window(self) -> float:
        """The mean training loss of the step curve's window (NaN when it is empty); a new one opens."""
        mean = float(self.backend.to_host(self.window)) / self.window_count if self.window_count else math.nan
        self.window, self.window_count = self.backend.xp.zeros((), dtype="float64"), 0
        return mean

    def partial(self, started: float) -> dict:
        """The sums as a checkpoint stores them (host numbers), ``started`` being the epoch's clock."""
        return {
            "loss_sum": float(self.backend.to_host(self.loss)),
            "correct": int(self.backend.to_host(self.correct)),
            "counted": self.counted,
            "skipped": self.skipped,
            "seconds": self.seconds + time.perf_counter() - started,
            "window_loss": float(self.backend.to_host(self.window)),
            "window_count": self.window_count,
        }


class Run(RunFiles):
    """The state of one training run: model, optimizer, host data, where it stands, where it writes.

    ``config`` says how to train (epochs, batches, schedule, validation, ...; the model and optimizer
    are given built), ``out`` where to write (None: nowhere). ``check_every`` and ``max_skips`` are the
    divergence guard's intervals. Every check that needs the data is made here, before anything is
    written."""

    def __init__(self, model, optimizer, data, config: RunConfig, out=None, *, check_every: int = CHECK_EVERY,
                 max_skips: int = MAX_SKIPS):  # fmt: skip
        check_classifier(model)
        check_input_shape(model, data.train_images)
        self.model, self.optimizer, self.config = model, optimizer, config
        self.backend, self.xp = model.backend, model.xp
        self.check_every, self.max_skips, self.skip = check_every, max_skips, config.on_divergence == "skip"
        self.val_images = self.val_labels = self.early = None  # the validation split and early stopping
        if config.validation is not None:
            data, self.val_images, val_labels = split_validation(data, config.validation, config.seed)
            self.val_labels, self.early = (
                np.asarray(val_labels, np.int64),
                EarlyStopping.for_run(config),
            )
        self._take_data(data)
        self.augmenter = self._augmenter()  # a cnnx.data.Augmenter for the training batches, or None
        self.schedule = Schedule.of(
            config.lr_schedule, optimizer.lr, config.warmup_steps, config.lr_step_every, config.lr_gamma
        )
        check_run(
            epochs=config.epochs,
            batches=self.batches,
            max_steps=config.max_steps,
            schedule=self.schedule,
            checkpoint_every=config.checkpoint_every,
            writes_files=out is not None,
        )
        # Where the run stands: epochs completed, batches done of the next one (with their host sums),
        # steps taken, the history, and the shuffle generator before the next epoch's permutation.
        self.epoch_done, self.batch_done, self.step, self.history = 0, 0, 0, []
        self.partial, self.curves, self.rng = fresh_partial(), fresh_curves(), None
        self.consecutive_skips = 0
        self.snapshot = None if self.skip else Snapshot(model, optimizer)  # skip mode never updates badly
        self.stop = self.stopping = None
        self.results_of = None  # which weights the results describe: {"file": ..., "epoch": ...}
        self.current = None  # (epoch, its batch order, the step number of its batch 0) while it runs
        self.group = None  # the epoch's data-parallel workers while it runs (cnnx.nn.parallel.ShardGroup)
        super().__init__(out)

    def _take_data(self, data) -> None:
        """The host data and its checks: labels within the model's classes, a training set to cut into
        batches of the configured size."""
        self.data, self.images, self.test_images = data, data.train_images, data.test_images
        self.labels = np.asarray(data.train_labels, np.int64)
        self.test_labels = np.asarray(data.test_labels, np.int64)
        self.num_classes = self.model.output_shapes()[-1][0]
        self.class_names = class_names(data, self.num_classes)
        for name, values in (("training", self.labels), ("test", self.test_labels)):
            if len(values) and (values.min() < 0 or values.max() >= self.num_classes):
                raise DataError(f"{name} labels must lie in [0, {self.num_classes}), found "
                                f"{values.min()}..{values.max()}")  # fmt: skip
        if len(self.images) == 0:
            raise DataError("the training set is empty")
        if self.batch_size > len(self.images):
            raise ConfigError(f"batch size {self.batch_size} is larger than the training set "
                              f"({plural(len(self.images), 'image')})")  # fmt: skip
        self.batches = -(-len(self.images) // self.batch_size)

    def _augmenter(self) -> Augmenter | None:
        transforms = parse_augment(self.config.augment)
        if not transforms:
            return None
        if len(self.model.input_shape) != 3:
            raise ConfigError(
                f"augment needs image inputs (C, H, W), and the model takes {self.model.input_shape}"
            )
        return Augmenter(transforms, derive_rng(self.config.seed, "augment"))

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def total_steps(self) -> int:
        """The run's length in steps, for the schedule."""
        room = self.config.epochs * self.batches
        return room if self.config.max_steps is None else min(self.config.max_steps, room)

    # -- training -------------------------------------------------------------------------------

    def train(self, reporter: Reporter, stop=None) -> np.ndarray | None:
        """Train the remaining epochs; returns the test predictions of the weights the run reports, which
        ``results_of`` names (see :func:`cnnx.training.early.reported`). ``stop`` is polled once a step
        (see :class:`cnnx.training.interrupt.StopFlag`)."""
        predictions, epochs, self.stop = None, self.config.epochs, stop
        for epoch in range(self.epoch_done + 1, epochs + 1):
            with self.shard_group() as self.group:  # the epoch's workers (cnnx.nn.parallel; none on a GPU)
                row, predictions = self.epoch(epoch, reporter)
            self.group = None
            self.history.append(row)
            self.epoch_done, self.batch_done, self.partial = epoch, 0, fresh_partial()
            reporter.end(row)
            stop_early = self.watch_validation(epoch, row, predictions, reporter)
            if self.out is not None:
                self.save(self.rng.bit_generator.state)
                self.record_results(predictions)
                self.write_record()
            if self.steps_done() or stop_early:
                break
            if self.stopping and epoch < epochs:
                raise TrainingInterrupted(self.stopping, self.checkpoint_path(), epoch + 1, 0)
        shown, self.results_of = reported(self, predictions)
        return shown

    def record_results(self, predictions) -> np.ndarray | None:
        """Put the results of the weights the run reports into its record; returns their predictions."""
        shown, self.results_of = reported(self, predictions)  # best.npz's, when the run kept it
        self.record.update(results(self.history, self.test_labels, shown, self.num_classes, self.class_names,
                                   self.results_of))  # fmt: skip
        return shown

    def results_without_training(self) -> np.ndarray:
        """For a run whose training had ended before its process was killed: the test predictions of its
        last weights, and the results they give, in its record."""
        _, _, predictions = self.evaluate(self.test_images, self.test_labels)
        return self.record_results(predictions)

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
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def stopped_early(self) -> bool:
        """Whether early stopping had ended the run (as a checkpoint records it)."""
        early = self.early
        return early is not None and early.patience is not None and early.waited >= early.patience

    def epoch(self, epoch: int, reporter: Reporter) -> tuple[dict, np.ndarray]:
        """Train on the epoch's batches (those not done yet, when resumed), then evaluate: (history row,
        test predictions)."""
        started = time.perf_counter()
        rng_before = self.rng.bit_generator.state
        order = self.rng.permutation(len(self.images))
        done = self.batch_done
        base_step = self.step - done  # the global step number of this epoch's batch 0
        sums = EpochSums(self.backend, self.partial)
        last = done  # the last batch trained (fewer than self.batches when max_steps ends the epoch early)
        if self.snapshot is not None:
            self.snapshot.take(done)
        self.current = (epoch, order, base_step)
        reporter.start(epoch, done)
        for batch in range(done + 1, self.batches + 1):
            if self.steps_done():
                break
            last = batch
            self.train_batch(batch, sums, reporter)
            self.look(batch, sums, reporter)
            asked = self.stop.requested if self.stop is not None else None
            self.stopping = asked if self.group is None else self.group.agreed(asked)  # MPI: every rank's
            periodic = (
                self.config.checkpoint_every is not None and self.step % self.config.checkpoint_every == 0
            )
            if batch < self.batches and (self.stopping or (periodic and self.out is not None)):
                self.checkpoint_mid_epoch(batch, sums, started, rng_before)
        return self.end_epoch(epoch, last, sums, started)

    def train_batch(self, batch: int, sums: EpochSums, reporter: Reporter) -> None:
        """One step on the 1-based ``batch`` of the current epoch, and the step curves' points it ends."""
        epoch, order, base_step = self.current
        x, y = self.batch(order, batch)
        if self.schedule is not None:
            self.optimizer.lr = self.schedule.rate(self.step, self.total_steps)
        outcome = train_step(self.model, self.optimizer, x, y, skip_nonfinite=self.skip,
                             clip=self.config.clip_grad_norm, group=self.group)  # fmt: skip
        self.step += 1
        if outcome is None:
            sums.skipped += 1
            self.skipped_step(epoch, batch, base_step + batch, x, y, reporter)
        else:
            self.consecutive_skips = 0
            sums.add(outcome, len(x), batch)
        if self.config.log_every is not None and self.step % self.config.log_every == 0:
            self.curves["train"].append([self.step, _finite_or_none(sums.close_window())])
        if self.config.eval_every is not None and self.step % self.config.eval_every == 0:
            self.evaluate_now()

    def look(self, batch: int, sums: EpochSums, reporter: Reporter) -> None:
        """Every ``check_every`` batches, read the running loss back: it must be finite (the divergence
        guard then takes a new snapshot), and the progress shows it."""
        text = None
        if batch % self.check_every == 0 and batch < self.batches:
            running = float(self.backend.to_host(sums.loss)) / max(sums.counted, 1)
            self.check_finite(running, sums.first_bad, batch)
            if self.snapshot is not None:
                self.snapshot.take(batch)
            text = f"loss {running:.4f}"
        reporter.advance(text)

    def checkpoint_mid_epoch(self, batch: int, sums: EpochSums, started: float, rng_before: dict) -> None:
        """Checkpoint after ``batch`` (its sums checked finite first), and stop there when asked to."""
        self.check_finite(float(self.backend.to_host(sums.loss)), sums.first_bad, batch)
        self.batch_done, self.partial = batch, sums.partial(started)
        if self.out is not None:
            self.save(rng_before)
        if self.stopping:
            raise TrainingInterrupted(self.stopping, self.checkpoint_path(), self.current[0], batch)

    def end_epoch(self, epoch: int, last: int, sums: EpochSums, started: float) -> tuple[dict, np.ndarray]:
        """The epoch's history row after its last batch (``last``), and its test predictions."""
        if sums.counted == 0:
            raise DivergenceError(
                f"training diverged: every step of epoch {epoch} was skipped; {self.last_good()}"
            )
        train_loss = float(self.backend.to_host(sums.loss)) / sums.counted
        self.check_finite(train_loss, sums.first_bad, last)
        train_accuracy = int(self.backend.to_host(sums.correct)) / sums.counted
        test_loss, test_accuracy, predictions = self.evaluate(self.test_images, self.test_labels)
        if len(self.test_labels) and not math.isfinite(test_loss):
            raise DivergenceError(f"the test loss is not finite after epoch {epoch}; {self.last_good()}")
        self.backend.synchronize()
        seconds = sums.seconds + time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
               "test_loss": test_loss, "test_accuracy": test_accuracy, "skipped": sums.skipped,
               "seconds": seconds}  # fmt: skip
        if last < self.batches:  # max_steps ended the epoch early
            row["batches"] = last
        if self.val_images is not None:
            val_loss, val_accuracy, _ = self.evaluate(self.val_images, self.val_labels)
            row["val_loss"], row["val_accuracy"] = _finite_or_none(val_loss), val_accuracy
        if self.config.eval_every is not None and (
            not self.curves["test"] or self.curves["test"][-1][0] != self.step
        ):
            self.curves["test"].append([self.step, _finite_or_none(test_loss), test_accuracy])
        return row, predictions

    def evaluate_now(self) -> None:
        """A point of the test curve at the current step; the record is rewritten with it, so a run
        that dies keeps its curves up to there."""
        loss, accuracy, _ = self.evaluate(self.test_images, self.test_labels)
        self.curves["test"].append([self.step, _finite_or_none(loss), accuracy])
        self.write_record()

    def shard_group(self):
        """The workers of the epoch's steps and evaluations (see :mod:`cnnx.nn.parallel`)."""
        config = self.config
        return data_parallel(self.model, self.optimizer, max_batch=self.batch_size, workers=config.workers,
                             shard_size=config.shard_size, ranks=True)  # fmt: skip

    def evaluate(self, images, labels):
        """Loss, accuracy and predictions of the model on host data, on the epoch's workers when they run."""
        return evaluate(
            self.model, images, labels, self.batch_size, group=self.group, workers=self.config.workers
        )

    def batch(self, order: np.ndarray, batch: int):
        """The device arrays of the 1-based ``batch`` of an epoch ordered by ``order``."""
        index = order[(batch - 1) * self.batch_size : batch * self.batch_size]
        host = model_inputs(self.images[index], self.model.dtype, self.model.input_shape)
        if self.augmenter is not None:  # host work, cut over the CPU backend's threads in its region
            host = self.augmenter(host, split=self.backend.split_batch)
        x = self.backend.to_device(host, self.model.dtype)
        return x, self.backend.to_device(self.labels[index], "int64")

    # -- divergence -----------------------------------------------------------------------------

    def check_finite(self, value: float, first_bad, upto: int) -> None:
        """Raise DivergenceError, naming where it started, if the read-back ``value`` is not finite:
        the current epoch's batches up to ``upto`` are replayed from the last snapshot."""
        if math.isfinite(value):
            return
        epoch, order, base_step = self.current
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

"""Training progress on the terminal: a click bar with ETA, one line per epoch, or nothing; and the lines
that say how a run ended (:func:`stopped_early`, :func:`summary`)."""

from __future__ import annotations

import sys

import click

from cnnx.checks import plural
from cnnx.fileio import echo, unless_closed

from .names import CHECKPOINT

PROGRESS_MODES = ("auto", "bar", "lines", "none")


class Reporter:
    """Shows progress: a click bar with ETA on a terminal, one line per epoch otherwise, or nothing.
    Notes (a skipped step) go to stderr in every mode but "none"."""

    def __init__(self, mode: str, epochs: int, batches: int):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode, self.epochs, self.batches = mode, epochs, batches
        self.bar = None

    def start(self, epoch: int, done: int = 0) -> None:
        """A new epoch begins, ``done`` of its batches already trained (a resumed run)."""
        if self.mode == "bar":
            # The text after the bar is the running loss, refreshed only when it was read back anyway.
            self.bar = click.progressbar(
                length=self.batches,
                label=f"epoch {epoch}/{self.epochs}",
                show_eta=True,
                show_pos=True,
                item_show_func=lambda text: text,
            )
            with unless_closed(sys.stdout):  # a closed output stops the printing, never the training
                self.bar.__enter__()
                if done:
                    self.bar.update(done)

    def advance(self, text: str | None = None) -> None:
        if self.bar is not None:
            with unless_closed(sys.stdout):
                self.bar.update(1, text)

    def note(self, text: str) -> None:
        if self.mode != "none":
            echo(("\n" if self.bar is not None else "") + text, err=True)

    def say(self, text: str) -> None:
        """A line of the run's own story (it stopped early), on stdout between the epochs' lines."""
        if self.mode != "none":
            echo(text)

    def close(self) -> None:
        if self.bar is not None:
            with unless_closed(sys.stdout):
                self.bar.__exit__(None, None, None)
            self.bar = None

    def end(self, row: dict) -> None:
        self.close()
        if self.mode != "none":
            echo(epoch_line(row, self.epochs))


def _number(value) -> str:
    return "nan" if value is None else f"{value:.4f}"  # None: a value that was not finite


def epoch_line(row: dict, epochs: int) -> str:
    """An epoch's line: training, validation (when the run holds a split out) and test loss and accuracy."""
    validation = ""
    if "val_loss" in row:
        validation = f"  val loss {_number(row['val_loss'])} acc {_number(row['val_accuracy'])}"
    skipped = f"  {row['skipped']} skipped" if row.get("skipped") else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {_number(row['train_loss'])} "
        f"acc {_number(row['train_accuracy'])}{validation}  test loss {_number(row['test_loss'])} "
        f"acc {_number(row['test_accuracy'])}{skipped}  {row['seconds']:.1f}s"
    )


def stopped_early(epoch: int, early) -> str:
    """Why a run ends at ``epoch``: ``early`` (a :class:`cnnx.training.early.EarlyStopping`) saw no better
    validation loss for its patience."""
    return (
        f"stopped early after epoch {epoch}: no better validation loss for "
        f"{plural(early.patience, 'epoch')} since epoch {early.best_epoch} ({early.best_loss:.4f})"
    )


def trained_length(history: list[dict], steps: int, batches: int) -> str:
    """How far a run trained: "5 epochs", or when ``max_steps`` ended it inside an epoch, "17 steps
    (2 epochs and 3 of 7 batches of epoch 3)"."""
    last = history[-1]
    if "batches" not in last:
        return plural(len(history), "epoch")
    part = f"{last['batches']} of {plural(batches, 'batch', 'batches')} of epoch {last['epoch']}"
    whole = len(history) - 1
    return f"{plural(steps, 'step')} ({plural(whole, 'epoch') + ' and ' if whole else ''}{part})"


def summary(run) -> str:
    """The last line of a finished :class:`~cnnx.training.loop.Run`: the test accuracy of the weights its
    results describe (``run.results_of``: best.npz's best epoch, or the last one), how far it trained,
    and where its files are."""
    history, weights = run.history, run.results_of
    row = next(row for row in history if row["epoch"] == weights["epoch"])
    length = trained_length(history, run.step, run.batches)
    text = f"test accuracy {_number(row['test_accuracy'])}"
    if weights["file"] != CHECKPOINT:  # the best epoch's weights, in best.npz (None: no files written)
        text += f" at best epoch {weights['epoch']} of {len(history)}"
        text += f" ({weights['file']})" if weights["file"] else ""
        text += "" if "batches" not in history[-1] else f", after {length}"
    else:
        text += f" after {length}"
    return text + (f"; outputs in {run.out}" if run.out is not None else "")

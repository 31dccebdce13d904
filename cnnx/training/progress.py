"""Training progress on the terminal: a click bar with ETA, one line per epoch, or nothing."""

from __future__ import annotations

import sys

import click

from cnnx.fileio import echo, unless_closed

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

    def close(self) -> None:
        if self.bar is not None:
            with unless_closed(sys.stdout):
                self.bar.__exit__(None, None, None)
            self.bar = None

    def end(self, row: dict) -> None:
        self.close()
        if self.mode != "none":
            skipped = f"  {row['skipped']} skipped" if row.get("skipped") else ""
            echo(
                f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} "
                f"acc {row['test_accuracy']:.4f}{skipped}  {row['seconds']:.1f}s"
            )

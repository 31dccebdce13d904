"""Stopping a training run cleanly: a flag that ``fit`` polls once per step, and the signal handlers
that raise it.

The first SIGINT (Ctrl-C) or SIGTERM raises the flag: ``fit`` finishes the step it is in, writes a
checkpoint and raises :class:`cnnx.train.TrainingInterrupted`. A second signal raises
:class:`StopNow` at once, wherever the program is; a checkpoint being written at that moment is
abandoned and its temporary file removed, so the previous checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report them


class StopFlag:
    """Asks a running ``fit`` to stop after its current step: ``requested`` is None, or why (e.g.
    "SIGINT"). Anything with a ``requested`` attribute will do, so tests can stop at a chosen step."""

    def __init__(self):
        self.requested: str | None = None

    def request(self, reason: str) -> None:
        self.requested = reason


class TrainingInterrupted(Exception):
    """``fit`` stopped because its stop flag was raised. ``checkpoint`` is the file to resume from (None
    without a run directory); ``epoch`` and ``batch`` say where: ``batch`` batches into ``epoch``."""

    def __init__(self, reason: str, checkpoint, epoch: int, batch: int):
        super().__init__(f"training stopped ({reason}) at epoch {epoch}, batch {batch}")
        self.reason, self.checkpoint, self.epoch, self.batch = reason, checkpoint, epoch, batch


class StopNow(KeyboardInterrupt):
    """A second signal arrived while the first was being honoured: stop at once."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, notify=None):
    """Within the block, SIGINT and SIGTERM raise ``flag`` (and call ``notify(signal name)``); a second
    one raises :class:`StopNow`. The previous handlers are restored on leaving. Outside the main thread,
    where Python cannot install handlers, the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if flag.requested:
            raise StopNow(name)
        flag.request(name)
        if notify is not None:
            notify(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

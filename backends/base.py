"""What every backend offers. Subclasses set ``name`` and ``xp`` and spell the few operations that differ."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np


class Backend:
    """A device: its array module ``xp``, host/device transfers, and the operations spelled per library."""

    name: str = "abstract"
    xp: Any = None
    # Whether training steps are cut into shards that workers share (cnnx.nn.parallel): on the CPU; a GPU
    # runs each step whole.
    data_parallel: bool = False
    # Whether the arrays are host memory (NumPy's): communicators then take them as they are, without a
    # copy through to_host and to_device.
    host_memory: bool = False

    def to_device(self, array, dtype=None):
        """Copy a host (NumPy) array, or anything array-like, to this device, optionally casting it. Always
        a new array, even for an array already on this device in that dtype."""
        raise NotImplementedError

    def to_host(self, array) -> np.ndarray:
        """Copy a device array (or a host one) to a new NumPy array: a copy on every backend, the CPU
        included, so writing into the result never changes the device array."""
        raise NotImplementedError

    def split_batch(self, fn, n: int, work: int = 0) -> None:
        """Call ``fn(part)`` for slices ``part`` that together cover ``range(n)``, once each.

        This is how a layer runs a kernel over a batch (or over any axis it can cut: the columns of a
        weight gradient, say). ``fn`` reads its ``part`` of the inputs and writes only its ``part`` of
        outputs allocated beforehand, so the parts may run at the same time, and it must give the same
        numbers however the range is cut. ``work`` is the number of elements the whole call touches; a
        backend may run small calls in one piece. Here, and on a GPU (whose kernels are parallel
        already), it is one call over the whole range; the CPU backend spreads large calls over threads.
        """
        fn(slice(0, n))

    def cache_block(self, n: int, item_bytes: int) -> int:
        """How many of ``n`` items a kernel should take at a time when each needs ``item_bytes`` of
        scratch memory (the unfolded windows of one image, say). Here, and on a GPU, all of them: one
        large kernel is fastest there. The CPU backend answers with as many as fit in a core's cache, so
        that scratch written by one step is still in cache when the next step reads it."""
        return n

    @contextmanager
    def parallel_region(self):
        """A block of work (a training run, an evaluation) in which :meth:`split_batch` has the machine
        to itself. Nothing to arrange here or on a GPU; the CPU backend hands the cores from the BLAS
        library's threads to its own (see ``NumpyBackend``). Blocks nest."""
        yield

    def workers(self) -> int:
        """How many workers a data-parallel step uses here by default (see :mod:`cnnx.parallel`): one on
        a GPU (whose kernels are parallel already) and here; the CPU backend answers with its cores."""
        return 1

    @contextmanager
    def sharded(self):
        """A block in which data-parallel workers each run whole steps on one thread of their own: the
        CPU backend gives BLAS one thread and runs every kernel in one piece. Nothing to do here."""
        yield

    def synchronize(self) -> None:
        """Wait until all queued device work is done (before reading a clock)."""

    def memory_pool_bytes(self) -> int | None:
        """Bytes the device's memory pool holds (None on the CPU, which has no pool)."""
        return None

    def release_memory_pool(self) -> None:
        """Give the pool's unused blocks back, so that :meth:`memory_pool_bytes` next shows a fresh peak."""

    def describe(self) -> str:
        """A one-line description of the device, for logs and run records."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

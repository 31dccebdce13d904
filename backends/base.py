"""What every backend offers. Subclasses set ``name`` and ``xp`` and spell the few operations that differ."""

from __future__ import annotations

from typing import Any

import numpy as np


class Backend:
    """A device: its array module ``xp``, host/device transfers, and the operations spelled per library."""

    name: str = "abstract"
    xp: Any = None

    def to_device(self, array, dtype=None):
        """Copy a host (NumPy) array, or anything array-like, to this device, optionally casting it. Always
        a new array, even for an array already on this device in that dtype."""
        raise NotImplementedError

    def to_host(self, array) -> np.ndarray:
        """Copy a device array (or a host one) to a new NumPy array: a copy on every backend, the CPU
        included, so writing into the result never changes the device array."""
        raise NotImplementedError

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

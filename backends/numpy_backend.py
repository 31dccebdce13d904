"""The CPU backend: ``xp`` is NumPy, and a transfer is a plain copy."""

from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    name = "cpu"
    xp = np

    # Both transfers copy, as CuPy's do: code that writes into what it sent or got back must behave
    # the same on every backend (a batch-sized copy costs microseconds next to a training step).
    def to_device(self, array, dtype=None):
        return np.array(array, dtype=dtype, copy=True)

    def to_host(self, array) -> np.ndarray:
        return np.array(array, copy=True)

    def describe(self) -> str:
        return f"cpu (NumPy {np.__version__})"

"""The CPU backend: ``xp`` is NumPy, transfers are (nearly) free."""

from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    name = "cpu"
    xp = np

    def to_device(self, array, dtype=None):
        return np.asarray(array, dtype=dtype)

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def scatter_add(self, target, indices, values) -> None:
        np.add.at(target, indices, values)

    def describe(self) -> str:
        return f"cpu (NumPy {np.__version__})"

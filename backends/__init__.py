"""The device seam: the only package that knows CuPy exists.

``get_backend("cpu" | "gpu" | "auto")`` returns a :class:`Backend`. Layers, losses and optimizers do their
maths through ``backend.xp`` (NumPy or CuPy) and cross the host/device line only through
``backend.to_device`` and ``backend.to_host``. There is no global current backend: a CPU model and a
GPU model can live side by side in one process.
"""

from __future__ import annotations

from cnnx.errors import CnnxError

from .base import Backend
from .numpy_backend import NumpyBackend

__all__ = ["Backend", "BackendUnavailable", "NumpyBackend", "available_backends", "get_backend"]

DEVICES = ("cpu", "gpu", "auto")


class BackendUnavailable(CnnxError):
    """The requested device cannot be used here; the message says why in one line."""


_cache: dict[str, Backend] = {}


def get_backend(device: str | Backend | None = "cpu") -> Backend:
    """Return the backend for ``device``: "cpu" (NumPy), "gpu" (CuPy on CUDA) or "auto" (GPU if usable).

    A Backend passed in is returned as is, so functions can take either a name or a backend.
    """
    if isinstance(device, Backend):
        return device
    name = "cpu" if device is None else str(device).lower()
    if name not in DEVICES:
        raise BackendUnavailable(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        try:
            return get_backend("gpu")
        except BackendUnavailable:
            return get_backend("cpu")
    if name not in _cache:
        if name == "cpu":
            _cache[name] = NumpyBackend()
        else:
            from .cupy_backend import CupyBackend, gpu_problem

            problem = gpu_problem()
            if problem:
                raise BackendUnavailable(f"GPU backend unavailable: {problem}")
            _cache[name] = CupyBackend()
    return _cache[name]


def available_backends() -> dict[str, str | None]:
    """Map each device name to None when usable, else the one-line reason it is not."""
    from .cupy_backend import gpu_problem

    return {"cpu": None, "gpu": gpu_problem()}

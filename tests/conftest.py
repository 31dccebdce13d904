"""Shared fixtures: every numerical test runs once per usable backend and reports the others as skipped."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.backends import BackendUnavailable, get_backend

BACKENDS = ("cpu", "gpu")


def _backend_or_skip(name):
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn: NumPy always; CuPy where a CUDA device is usable (skipped with the reason)."""
    return _backend_or_skip(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def gpu_backend():
    return _backend_or_skip("gpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

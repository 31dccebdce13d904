"""Shared fixtures: every numerical test runs once per usable backend and dtype, and reports the others as
skipped with the reason. Test ids name what ran: ``test_x[cpu-float32]``, ``test_x[gpu-float64]``.
``pytest -m gpu`` selects the GPU cases alone (for a GPU session); ``-m "not gpu"`` leaves them out.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.backends import available_backends

from helpers import backend_or_skip
from strict_backend import StrictBackend

BACKENDS = ("cpu", "gpu")
DTYPES = ("float32", "float64")
BACKEND_PARAMS = [pytest.param("cpu", id="cpu"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


def pytest_report_header(config):
    rows = [
        f"{name}: {'usable' if problem is None else problem}"
        for name, problem in available_backends().items()
    ]
    return "cnnx backends -- " + "; ".join(rows)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Each backend in turn: NumPy always; CuPy where a CUDA device is usable (skipped with the reason)."""
    return backend_or_skip(request.param)


@pytest.fixture(params=DTYPES)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def gpu_backend():
    return backend_or_skip("gpu")


@pytest.fixture
def strict_backend():
    """A fresh NumPy-backed backend whose arrays refuse every host read-back except ``to_host``."""
    return StrictBackend()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

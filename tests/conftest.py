"""Shared fixtures: every numerical test runs once per usable backend and dtype, and reports the others as
skipped with the reason. Test ids name what ran: ``test_x[cpu-float32]``, ``test_x[gpu-float64]``.
``pytest -m gpu`` selects the GPU cases alone (for a GPU session); ``-m "not gpu"`` leaves them out.
"""

from __future__ import annotations

import os

# scikit-learn's estimator checks include one that turns array-API dispatch on and checks that NumPy inputs
# give the same results; SciPy reads this switch once, at import, so it is set before anything imports it.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cnnx.backends import available_backends  # noqa: E402

from helpers import backend_or_skip  # noqa: E402
from strict_backend import StrictBackend  # noqa: E402

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


@pytest.fixture
def user_layer_module(tmp_path):
    """``make(name)``: a user's leaky ReLU registered as ``name`` from a file of its own, imported as
    ``--import`` imports it; the types it registers are forgotten after the test."""
    from cnnx.nn.registry import unregister_layer
    from cnnx.plugins import import_module_or_file

    names = []

    def make(name: str):
        path = tmp_path / f"{name.lower()}_layer.py"
        from helpers import leaky_relu_source

        path.write_text(leaky_relu_source(name))
        names.append(name)
        return import_module_or_file(str(path))

    yield make
    for name in names:
        unregister_layer(name)

"""Test helpers: finite differences and relative-error reports."""

from __future__ import annotations

import numpy as np
import pytest
from cnnx.backends import BackendUnavailable, get_backend


def backend_or_skip(name):
    """The named backend, or skip the test with the one-line reason it is unusable here."""
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def rel_error(a, b) -> float:
    """max |a - b| / max(|a|, |b|, tiny): one number that says how far two arrays are apart."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def assert_close(actual, expected, rtol, what="arrays"):
    err = rel_error(actual, expected)
    assert err < rtol, f"{what} differ: relative error {err:.3e} >= {rtol:.0e}"


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function f at x (float64, host), one coordinate at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad

"""Softmax cross-entropy: value, gradient and numerical stability."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx import functional as F
from cnnx.losses import correct_count, softmax_cross_entropy

import reference as ref
from helpers import assert_close, numerical_gradient


def test_loss_matches_the_textbook_formula(backend, dtype, rng):
    logits = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    loss, _ = softmax_cross_entropy(backend.xp, backend.to_device(logits, dtype), backend.to_device(labels))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert_close(backend.to_host(loss), ref.softmax_cross_entropy(logits.astype(dtype), labels), tol, "loss")


def test_loss_gradient_matches_finite_differences(backend, rng):
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    labels_dev = backend.to_device(labels)
    _, dlogits = softmax_cross_entropy(backend.xp, backend.to_device(logits, "float64"), labels_dev)

    def loss():
        value, _ = softmax_cross_entropy(backend.xp, backend.to_device(logits, "float64"), labels_dev)
        return float(backend.to_host(value))

    assert_close(backend.to_host(dlogits), numerical_gradient(loss, logits), 1e-6, "dlogits")


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_give_finite_loss_and_gradient(backend, dtype, scale):
    logits = np.zeros((3, 10))
    logits[:, 0] = scale
    logits[1, 5] = -scale
    loss, dlogits = softmax_cross_entropy(
        backend.xp, backend.to_device(logits, dtype), backend.to_device(np.array([0, 3, 9]))
    )
    assert np.isfinite(backend.to_host(loss)), "loss is not finite"
    assert np.isfinite(backend.to_host(dlogits)).all(), "gradient is not finite"


def test_a_confident_correct_prediction_costs_almost_nothing(backend):
    logits = np.full((1, 10), -1e4)
    logits[0, 4] = 1e4
    loss, _ = softmax_cross_entropy(
        backend.xp, backend.to_device(logits, "float64"), backend.to_device(np.array([4]))
    )
    assert backend.to_host(loss) == pytest.approx(0.0, abs=1e-12)


def test_loss_keeps_the_logits_dtype(backend, dtype, rng):
    loss, dlogits = softmax_cross_entropy(
        backend.xp, backend.to_device(rng.standard_normal((2, 3)), dtype), backend.to_device(np.array([0, 1]))
    )
    assert loss.dtype == dtype and dlogits.dtype == dtype


def test_softmax_rows_sum_to_one(backend, rng):
    probs = backend.to_host(
        F.softmax(backend.xp, backend.to_device(rng.standard_normal((4, 10)) * 50, "float64"))
    )
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_correct_count_counts_rows_whose_top_logit_is_the_label(backend):
    logits = np.array([[0.0, 2.0], [3.0, 1.0], [0.0, 1.0]])
    count = correct_count(backend.to_device(logits, "float32"), backend.to_device(np.array([1, 1, 1])))
    assert int(backend.to_host(count)) == 2

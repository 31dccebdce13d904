"""Softmax cross-entropy, fused: one pass gives the mean loss and the gradient of the logits."""

from __future__ import annotations

from . import functional as F


def softmax_cross_entropy(xp, logits, labels, count: int | None = None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and d(loss)/d(logits).

    logits: (N, K) floating array; labels: (N,) integer array on the same device, values in [0, K).
    Returns ``(loss, dlogits)`` where ``loss`` is a 0-d device array (reading it is the caller's
    choice, since on a GPU that is a synchronisation) and ``dlogits = (softmax(logits) - onehot) / N``.
    The log-sum-exp shift keeps both finite for logits as large as +-1e4 and beyond.

    ``count`` divides instead of N: for a shard of a batch of ``count`` rows, the loss is the shard's
    part of the batch's mean and ``dlogits`` its rows of the batch's gradient, the same numbers.

    Mathematics: docs/math.md#softmax-cross-entropy
    """
    n = logits.shape[0] if count is None else count
    rows = xp.arange(logits.shape[0])
    log_probs = F.log_softmax(xp, logits, axis=1)
    loss = -log_probs[rows, labels].sum() / n
    dlogits = xp.exp(log_probs)
    dlogits[rows, labels] -= 1
    dlogits /= n
    return loss, dlogits


def correct_count(logits, labels):
    """How many rows of ``logits`` rank the true label first, as a 0-d device array."""
    return (logits.argmax(axis=1) == labels).sum()

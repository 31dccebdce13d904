"""One training step and the evaluation of a model on host data: the two things every epoch does."""

from __future__ import annotations

import contextlib
import math

import numpy as np  # host: predictions and read-back values are returned on the host

from cnnx.data import model_inputs
from cnnx.errors import out_of_memory_errors
from cnnx.nn.losses import correct_count, softmax_cross_entropy
from cnnx.nn.parallel import data_parallel

from .divergence import step_is_finite


def train_step(model, optimizer, x, labels, *, skip_nonfinite: bool = False, clip: float | None = None,
               group=None):  # fmt: skip
    """One forward / loss / backward / update on device arrays; returns (loss summed over the batch,
    number correct) as 0-d device arrays, without reading anything back to the host.

    With ``group`` (a :class:`cnnx.nn.parallel.ShardGroup` of this model and optimizer) the step runs
    shard by shard on the group's workers, with the same options; without it, the batch runs whole.

    With ``skip_nonfinite``, the loss and gradients are checked first (one read-back) and a step where
    any is not finite is not applied: the weights and optimizer state stay as they were and None is
    returned. With ``clip``, the gradients are scaled down together when their global norm exceeds it
    (on the device: nothing is read back).
    """
    if group is not None:
        return group.train_step(x, labels, clip=clip, skip_nonfinite=skip_nonfinite)
    logits, saved = model.forward(x, train=True)
    loss, dlogits = softmax_cross_entropy(model.xp, logits, labels)
    _, grads = model.backward(saved, dlogits, need_dx=False)  # nobody trains the images: no dx
    model.set_grads(grads)
    if clip is not None:
        clip_gradients(model, clip)
    if skip_nonfinite and not step_is_finite(model, loss):
        return None
    optimizer.step()
    return loss * x.shape[0], correct_count(logits, labels)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, *, group=None,
             workers: int | None = None):  # fmt: skip
    """Mean loss, accuracy and predicted classes of ``model`` on host ``images``: uint8 pixels or other
    numbers (see :func:`cnnx.data.model_inputs`), (N, *input_shape) or flat per sample.

    Computed in batches of ``batch_size`` images, or fewer where the model's activations need it
    (:meth:`cnnx.nn.Sequential.inference_batch_size`); running out of memory all the same raises
    ResourceError. Returns ``(loss, accuracy, predictions)`` as host values: a float, a float and an
    int64 vector.

    The batches are cut into shards that ``workers`` share (see :mod:`cnnx.nn.parallel`), or the
    workers of ``group``, a training run's; the logits are the same however they are cut.
    """
    backend, xp = model.backend, model.xp
    size = model.inference_batch_size(batch_size)
    if group is not None:
        size = min(size, group.max_batch)
        workers_of_the_pass = contextlib.nullcontext(group)
    else:
        workers_of_the_pass = data_parallel(model, max_batch=min(size, max(1, len(images))), workers=workers)
    try:
        with workers_of_the_pass as group:
            loss_sum, predictions = _evaluate(model, images, labels, size, group)
    except out_of_memory_errors() as exc:
        raise model.out_of_memory("evaluating", min(size, len(images)), exc) from None
    if not predictions:
        return math.nan, math.nan, np.zeros(0, np.int64)  # nothing to measure: no number, not a zero
    predicted = backend.to_host(xp.concatenate(predictions)).astype(np.int64)
    n = len(images)
    return float(backend.to_host(loss_sum)) / n, float((predicted == labels).mean()), predicted


def _evaluate(model, images, labels, batch_size: int, group):
    """The summed loss (a 0-d device array) and the batches' predicted classes (device arrays)."""
    backend, xp = model.backend, model.xp
    loss_sum = xp.zeros((), dtype="float64")
    predictions = []
    for start in range(0, len(images), batch_size):
        x = backend.to_device(
            model_inputs(images[start : start + batch_size], model.dtype, model.input_shape), model.dtype
        )
        y = backend.to_device(labels[start : start + batch_size], "int64")
        logits = model(x) if group is None else group.logits(x)  # evaluation
        loss, _ = softmax_cross_entropy(xp, logits, y)
        loss_sum += loss * x.shape[0]
        predictions.append(logits.argmax(axis=1))
    return loss_sum, predictions


def clip_gradients(model, max_norm: float):
    """Scale every gradient of ``model`` by min(1, max_norm / (norm + 1e-6)), where norm is the global L2
    norm of all of them together; returns that norm, a 0-d device array.

    Mathematics: docs/math.md#gradient-clipping
    """
    xp = model.xp
    grads = [grad for _, _, grad in model.named_parameters() if grad is not None]
    squares = xp.zeros((), dtype="float64")
    for grad in grads:
        squares += (grad * grad).sum()
    norm = xp.sqrt(squares)
    scale = xp.minimum(1.0, max_norm / (norm + 1e-6))
    for grad in grads:
        grad *= scale.astype(grad.dtype)
    return norm

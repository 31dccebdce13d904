"""Dropout: random zeroing of activations in training, for generalisation."""

from __future__ import annotations

import numpy as np  # host: the mask is drawn on the host, from the layer's own stream

from .. import functional as F
from ..registry import Number, register_layer
from .base import Layer


@register_layer(fields={"p": Number(0, 1, high_open=True)})
class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability ``p`` and the others are
    scaled by 1 / (1 - p), so that evaluation (``train=False``) is the identity.

    The mask is drawn from the layer's own host stream (``"mask"``, seeded from the run seed and the
    layer's name), so every backend drops the same values, and a resumed run draws what it would have
    drawn. A shard of a batch (``draws``) takes its rows of the whole batch's mask. Image batches are
    drawn in NHWC order, the layers' memory order, and the result keeps it.

    Mathematics: docs/math.md#dropout
    """

    def __init__(self, p: float = 0.5, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.p = float(p)
        self.rng = self.random_stream("mask")

    def forward(self, x, train=True, draws=None):
        if not train or self.p == 0:
            return x, None
        image = x.ndim == 4
        shape = F.to_nhwc(x).shape if image else x.shape
        uniform = self.draw(draws, "mask", shape, _uniform)
        scale = np.asarray(1 / (1 - self.p), self.dtype)  # host
        mask = self.backend.to_device((uniform >= self.p).astype(self.dtype) * scale, self.dtype)  # host
        mask = F.to_nchw(mask) if image else mask
        return _times(x, mask), mask

    def backward(self, mask, dy, need_dx=True):
        if not need_dx:
            return None, {}
        return (dy if mask is None else _times(dy, mask)), {}  # no mask: evaluation or p == 0

    def config(self):
        return {"p": self.p}


def _uniform(rng, shape):  # host: the draw
    return rng.random(shape, dtype=np.float32)  # host


def _times(a, mask):
    if a.ndim == 4:  # multiply in NHWC order so the result stays channels last
        return F.to_nchw(F.to_nhwc(a) * F.to_nhwc(mask))
    return a * mask

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
    drawn. Image batches are drawn in NHWC order, the layers' memory order, and the result keeps it.
    """

    def __init__(self, p: float = 0.5, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.p = float(p)
        self.rng = self.random_stream("mask")
        self.mask = None

    def forward(self, x, train=True):
        if not train or self.p == 0:
            self.mask = None
            return x
        image = x.ndim == 4
        shape = F.to_nhwc(x).shape if image else x.shape
        keep = self.rng.random(shape, dtype=np.float32) >= self.p  # host: the draw
        scale = np.asarray(1 / (1 - self.p), self.dtype)  # host
        mask = self.backend.to_device(keep.astype(self.dtype) * scale, self.dtype)  # host: to the device
        self.mask = F.to_nchw(mask) if image else mask
        return self._times_mask(x)

    def backward(self, dy):
        if self.mask is None:  # evaluation, or p == 0: the identity
            return dy
        dx = self._times_mask(dy)
        self.mask = None
        return dx

    def _times_mask(self, a):
        if a.ndim == 4:  # multiply in NHWC order so the result stays channels last
            return F.to_nchw(F.to_nhwc(a) * F.to_nhwc(self.mask))
        return a * self.mask

    def config(self):
        return {"p": self.p}

"""Parameter-free shape and activation layers."""

from __future__ import annotations

import math

from .. import functional as F
from ..registry import register_layer
from .base import Layer


@register_layer()
class ReLU(Layer):
    """max(x, 0); the derivative is 1 where x > 0 and 0 elsewhere (0 at x == 0, as in the original report)."""

    def forward(self, x, train=True):
        # Image batches are computed in NHWC order (see functional.py), so the result keeps the channels-last
        # memory of the convolution before it on CuPy too, which does not promise to keep an input's layout.
        image = x.ndim == 4
        if image:
            x = F.to_nhwc(x)
        y = self.xp.maximum(x, 0)
        self.mask = (x > 0) if train else None
        return F.to_nchw(y) if image else y

    def backward(self, dy):
        if dy.ndim == 4:
            dx = F.to_nchw(F.to_nhwc(dy) * self.mask)
        else:
            dx = dy * self.mask
        self.mask = None
        return dx


@register_layer()
class Flatten(Layer):
    """Collapse every axis but the batch axis: (N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x, train=True):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.x_shape)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

"""Parameter-free shape and activation layers."""

from __future__ import annotations

import math

from .. import functional as F
from ..registry import register_layer
from .base import Layer


@register_layer()
class ReLU(Layer):
    """max(x, 0); the derivative is 1 where x > 0 and 0 elsewhere (0 at x == 0, as in the original report).

    Mathematics: docs/math.md#relu
    """

    commutes_with_max_pooling = True  # see running_order: it keeps the order of values

    def forward(self, x, train=True, draws=None):
        # Image batches are computed in NHWC order (see functional.py), so the result keeps the channels-last
        # memory of the convolution before it on CuPy too, which does not promise to keep an input's layout.
        xp, image = self.xp, x.ndim == 4
        if image:
            x = F.to_nhwc(x)
        y = xp.empty(x.shape, dtype=x.dtype)
        mask = xp.empty(x.shape, dtype=bool) if train else None

        def part(s):
            xp.maximum(x[s], 0, out=y[s])
            if train:
                xp.greater(x[s], 0, out=mask[s])

        self.backend.split_batch(part, x.shape[0], x.size)
        return (F.to_nchw(y) if image else y), mask

    def backward(self, mask, dy, need_dx=True):
        xp, image = self.xp, dy.ndim == 4
        if not need_dx:
            return None, {}
        if image:
            dy = F.to_nhwc(dy)
        dx = xp.empty(dy.shape, dtype=dy.dtype)
        self.backend.split_batch(lambda s: xp.multiply(dy[s], mask[s], out=dx[s]), dy.shape[0], dy.size)
        return (F.to_nchw(dx) if image else dx), {}


@register_layer(output_shape=lambda config, input_shape: (math.prod(input_shape),))
class Flatten(Layer):
    """Collapse every axis but the batch axis: (N, C, H, W) -> (N, C*H*W).

    Mathematics: docs/math.md#flatten
    """

    def forward(self, x, train=True, draws=None):
        return x.reshape(x.shape[0], -1), (x.shape if train else None)

    def backward(self, x_shape, dy, need_dx=True):
        return (dy.reshape(x_shape) if need_dx else None), {}

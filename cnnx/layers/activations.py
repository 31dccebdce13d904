"""Parameter-free shape and activation layers."""

from __future__ import annotations

import math

from .base import Layer


class ReLU(Layer):
    """max(x, 0); the derivative is 1 where x > 0 and 0 elsewhere (0 at x == 0, as in the original report)."""

    def forward(self, x, train=True):
        y = self.xp.maximum(x, 0)
        self.mask = (x > 0) if train else None
        return y

    def backward(self, dy):
        dx = dy * self.mask
        self.mask = None
        return dx


class Flatten(Layer):
    """Collapse every axis but the batch axis: (N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x, train=True):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.x_shape)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

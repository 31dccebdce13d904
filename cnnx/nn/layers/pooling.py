"""Pooling over NCHW inputs: max and average over k x k windows, and the global average."""

from __future__ import annotations

import math

from cnnx.errors import ConfigError

from .. import functional as F
from ..registry import Optional, Size, register_layer
from .base import Layer


class _WindowPool(Layer):
    """What max and average pooling share: k x k windows moved by ``stride`` (floor mode)."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.k = int(kernel_size)
        # None (not 0, which is an error) means windows that touch without overlapping.
        self.stride = self.k if stride is None else int(stride)

    def config(self):
        return {"kernel_size": self.k, "stride": self.stride}


def _pooled_shape(kind: str):
    """The output shape of a ``kind`` pooling: (C, OH, OW) for an input (C, H, W)."""

    def shape(config, input_shape) -> tuple[int, int, int]:
        c, h, w = input_shape
        k = config["kernel_size"]
        stride = k if config["stride"] is None else config["stride"]
        oh, ow = F.conv_output_size(h, k, stride, 0), F.conv_output_size(w, k, stride, 0)
        if oh < 1 or ow < 1:
            raise ConfigError(f"{kind} window {k} does not fit an input of {h}x{w}")
        return (c, oh, ow)

    return shape


def _global_shape(config, input_shape) -> tuple[int]:
    if len(input_shape) != 3:
        raise ConfigError(f"GlobalAvgPool2D expects (C, H, W) inputs, got {input_shape}")
    return (input_shape[0],)


def _windows(config, input_shape, output_shape) -> int:
    """Values per image a forward may allocate besides its output: its k*k windows, stacked."""
    return config["kernel_size"] ** 2 * math.prod(output_shape)


@register_layer(
    fields={"kernel_size": Size(), "stride": Optional(Size())},
    output_shape=_pooled_shape("MaxPool2D"),
    scratch=_windows,
)
class MaxPool2D(_WindowPool):
    """Max over k x k windows moved by ``stride`` (floor mode: a partial window at the edge is dropped).

    The gradient flows to each window's maximum; on ties, to the first maximum in row-major window
    order, the rule the common frameworks use, so CPU and GPU agree on flat regions. The report's 2x2
    windows of stride 2 take a path of their own (see :meth:`_forward_2x2`), chosen from the config.

    Mathematics: docs/math.md#maxpool2d
    """

    max_pooling = True  # see running_order

    def forward(self, x, train=True, draws=None):
        if self.k == self.stride == 2:
            return self._forward_2x2(x, train)
        windows = F.pool_windows(self.xp, x, self.k, self.stride)  # (k*k, N, C, OH, OW)
        return windows.max(axis=0), ((windows.argmax(axis=0), x.shape) if train else None)

    def backward(self, saved, dy, need_dx=True):
        if not need_dx:
            return None, {}
        if self.k == self.stride == 2:
            return self._backward_2x2(saved, dy), {}
        argmax, x_shape = saved
        return F.unpool_argmax(self.xp, dy, argmax, x_shape, self.k, self.stride), {}

    def _forward_2x2(self, x, train):
        """The report's pooling: two elementwise maxima over channels-last rows, no window copies, over
        parts of the batch at once where the backend has threads. Saves the two masks that say which
        column and which row won (see :func:`cnnx.nn.functional.maxpool2x2_nhwc`)."""
        xp, x = self.xp, F.to_nhwc(x)
        out = F.maxpool2x2_outputs(xp, x.shape, x.dtype, masks=train)
        self.backend.split_batch(
            lambda s: F.maxpool2x2_nhwc(xp, x[s], out=tuple(a if a is None else a[s] for a in out)),
            x.shape[0],
            x.size,
        )
        y, right, down = out
        return F.to_nchw(y), ((right, down, x.shape) if train else None)

    def _backward_2x2(self, saved, dy):
        (right, down, x_shape), xp, dy = saved, self.xp, F.to_nhwc(dy)
        n, h, w, _ = x_shape
        edge = h % 2 or w % 2  # a dropped partial window gets zeros
        dx = xp.zeros(x_shape, dtype=dy.dtype) if edge else xp.empty(x_shape, dtype=dy.dtype)
        self.backend.split_batch(
            lambda s: F.maxpool2x2_nhwc_backward(xp, dy[s], right[s], down[s], dx[s].shape, out=dx[s]),
            n,
            dx.size,
        )
        return F.to_nchw(dx)


@register_layer(
    fields={"kernel_size": Size(), "stride": Optional(Size())},
    output_shape=_pooled_shape("AvgPool2D"),
    scratch=_windows,
)
class AvgPool2D(_WindowPool):
    """Mean over k x k windows moved by ``stride`` (floor mode); each input gets dy / (k*k) from every
    window it lies in.

    Mathematics: docs/math.md#avgpool2d
    """

    def forward(self, x, train=True, draws=None):
        return F.pool_windows(self.xp, x, self.k, self.stride).mean(axis=0), (x.shape if train else None)

    def backward(self, x_shape, dy, need_dx=True):
        if not need_dx:
            return None, {}
        n, c, h, w = x_shape
        oh, ow = dy.shape[2], dy.shape[3]
        share = dy / (self.k * self.k)
        dx = self.xp.zeros((n, c, h, w), dtype=dy.dtype)
        s = self.stride
        for i in range(self.k):
            for j in range(self.k):
                dx[:, :, i : i + s * oh : s, j : j + s * ow : s] += share
        return dx, {}


@register_layer(output_shape=_global_shape)
class GlobalAvgPool2D(Layer):
    """The mean of each channel over the whole image: (N, C, H, W) -> (N, C).

    Mathematics: docs/math.md#globalavgpool2d
    """

    def forward(self, x, train=True, draws=None):
        return F.to_nhwc(x).mean(axis=(1, 2)), (x.shape if train else None)

    def backward(self, x_shape, dy, need_dx=True):
        if not need_dx:
            return None, {}
        n, c, h, w = x_shape
        dx = self.xp.empty((n, h, w, c), dtype=dy.dtype)  # channels last, as the layers keep images
        dx[...] = (dy / (h * w))[:, None, None, :]
        return F.to_nchw(dx), {}

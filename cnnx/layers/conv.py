"""2-D convolution over NCHW inputs, as an im2col matrix product."""

from __future__ import annotations

from cnnx import functional as F
from cnnx.errors import ConfigError

from .base import Layer


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConfigError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


class Conv2D(Layer):
    """Cross-correlation of (N, C, H, W) inputs with F kernels of shape (C, kh, kw), plus a bias per kernel.

    Weights ``W`` have shape (out_channels, in_channels, kh, kw) and ``b`` (out_channels,). The output is
    (N, F, OH, OW) with OH = (H + 2*padding - kh) // stride + 1, and likewise OW.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride: int = 1, padding: int = 0,
                 *, init: str = "xavier", rng=None, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        if stride < 1 or padding < 0:
            raise ConfigError(f"Conv2D needs stride >= 1 and padding >= 0, got {stride} and {padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kh, self.kw = _pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.init = stride, padding, init
        self.params["W"] = self._new_weight((out_channels, in_channels, self.kh, self.kw), init, rng)
        self.params["b"] = self._zeros((out_channels,))

    def forward(self, x, train=True):
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got {c}")
        oh, ow = self.output_shape((c, h, w))[1:]
        cols = F.im2col(self.xp, x, self.kh, self.kw, self.stride, self.padding)   # (N, C*kh*kw, OH*OW)
        w2 = self.params["W"].reshape(self.out_channels, -1)                          # (F, C*kh*kw)
        y = self.xp.matmul(w2, cols)                                                  # (N, F, OH*OW)
        y += self.params["b"][:, None]
        self.cols, self.x_shape = (cols, x.shape) if train else (None, None)
        return y.reshape(n, self.out_channels, oh, ow)

    def backward(self, dy):
        n = dy.shape[0]
        dy = dy.reshape(n, self.out_channels, -1)                                     # (N, F, OH*OW)
        w2 = self.params["W"].reshape(self.out_channels, -1)
        self.grads["W"] = self.xp.tensordot(dy, self.cols, axes=([0, 2], [0, 2])).reshape(self.params["W"].shape)
        self.grads["b"] = dy.sum(axis=(0, 2))
        dcols = self.xp.matmul(w2.T, dy)                                              # (N, C*kh*kw, OH*OW)
        self.cols = None
        return F.col2im(self.xp, dcols, self.x_shape, self.kh, self.kw, self.stride, self.padding)

    def output_shape(self, input_shape):
        c, h, w = input_shape
        oh = F.conv_output_size(h, self.kh, self.stride, self.padding)
        ow = F.conv_output_size(w, self.kw, self.stride, self.padding)
        if oh < 1 or ow < 1:
            raise ConfigError(f"Conv2D kernel {self.kh}x{self.kw} does not fit an input of {h}x{w}")
        return (self.out_channels, oh, ow)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": [self.kh, self.kw], "stride": self.stride, "padding": self.padding,
                "init": self.init}

"""Max pooling over NCHW inputs."""

from __future__ import annotations

from cnnx.checks import whole_number
from cnnx.errors import ConfigError

from .. import functional as F
from ..registry import Optional, Size, register_layer
from .base import Layer


@register_layer(fields={"kernel_size": Size(), "stride": Optional(Size())})
class MaxPool2D(Layer):
    """Max over k x k windows moved by ``stride`` (floor mode: a partial window at the edge is dropped).

    The gradient flows to each window's maximum; on ties, to the first maximum in row-major window
    order, the rule the common frameworks use, so CPU and GPU agree on flat regions.
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.k = whole_number("MaxPool2D", "kernel_size", kernel_size)
        # None (not 0, which is an error) means windows that touch without overlapping.
        self.stride = self.k if stride is None else whole_number("MaxPool2D", "stride", stride)
        self.saved = None  # what backward needs: (path, masks or argmax, x shape)

    def forward(self, x, train=True):
        if self.k == self.stride == 2:
            # The report's pooling: two elementwise maxima over channels-last rows, no window copies.
            y, right, down = F.maxpool2x2_nhwc(self.xp, F.to_nhwc(x), masks=train)
            self.saved = ("2x2", right, down, F.to_nhwc(x).shape) if train else None
            return F.to_nchw(y)
        windows = F.pool_windows(self.xp, x, self.k, self.stride)  # (k*k, N, C, OH, OW)
        self.saved = ("windows", windows.argmax(axis=0), None, x.shape) if train else None
        return windows.max(axis=0)

    def backward(self, dy):
        path, first, second, x_shape = self.saved
        self.saved = None
        if path == "2x2":
            return F.to_nchw(F.maxpool2x2_nhwc_backward(self.xp, F.to_nhwc(dy), first, second, x_shape))
        return F.unpool_argmax(self.xp, dy, first, x_shape, self.k, self.stride)

    def output_shape(self, input_shape):
        c, h, w = input_shape
        oh = F.conv_output_size(h, self.k, self.stride, 0)
        ow = F.conv_output_size(w, self.k, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ConfigError(f"MaxPool2D window {self.k} does not fit an input of {h}x{w}")
        return (c, oh, ow)

    def config(self):
        return {"kernel_size": self.k, "stride": self.stride}

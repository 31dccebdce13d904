"""2-D convolution over NCHW inputs, as an im2col matrix product computed channels last (the kernels and
their plan are in :mod:`cnnx.nn.convolution`)."""

from __future__ import annotations

from cnnx.checks import whole_number
from cnnx.errors import ConfigError

from .. import convolution
from .. import functional as F
from ..registry import INIT, Choice, Flag, OneOf, Size, SizePair, register_layer
from .base import Layer


def _pair(value, name: str) -> tuple[int, int]:
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2:
        raise ConfigError(f"Conv2D {name} must be a positive int or a pair of them, got {value!r}")
    return whole_number("Conv2D", name, items[0]), whole_number("Conv2D", name, items[1])


def _kernel_area(kernel_size) -> int:
    return kernel_size * kernel_size if isinstance(kernel_size, int) else kernel_size[0] * kernel_size[1]


def _scratch(config, input_shape, output_shape) -> int:
    """Values per image a forward allocates besides its output: the padded input and its unfolded
    windows (OH*OW rows of kh*kw*C numbers)."""
    (kh, kw), (c, h, w) = config["kernel_size"], input_shape
    ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if config["padding"] == "same" else (config["padding"],) * 2
    return c * (h + 2 * ph) * (w + 2 * pw) + output_shape[1] * output_shape[2] * kh * kw * c


@register_layer(
    fields={"in_channels": Size(), "out_channels": Size(), "kernel_size": SizePair(), "stride": Size(),
            "padding": OneOf(Size(minimum=0), Choice("same")), "init": INIT, "bias": Flag()},
    parameters=lambda c: c["out_channels"] * (c["in_channels"] * _kernel_area(c.get("kernel_size", 3))
                                              + bool(c.get("bias", True))),
    scratch=_scratch,
)  # fmt: skip
class Conv2D(Layer):
    """Cross-correlation of (N, C, H, W) inputs with F kernels of shape (C, kh, kw), plus a bias per kernel
    (none with ``bias=False``: before a batch norm, which would cancel it).

    Weights ``W`` have shape (out_channels, in_channels, kh, kw) and ``b`` (out_channels,). The output is
    (N, F, OH, OW) with OH = (H + 2*padding - kh) // stride + 1, and likewise OW. ``padding="same"``
    (stride 1, odd kernel sizes) pads (kh - 1) / 2 rows and (kw - 1) / 2 columns on each side, so the
    output keeps the input's height and width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        stride: int = 1,
        padding: int | str = 0,
        *,
        init: str = "xavier",
        bias: bool = True,
        rng=None,
        backend=None,
        dtype="float32",
    ):
        super().__init__(backend=backend, dtype=dtype)
        self.in_channels = whole_number("Conv2D", "in_channels", in_channels)
        self.out_channels = whole_number("Conv2D", "out_channels", out_channels)
        self.kh, self.kw = _pair(kernel_size, "kernel_size")
        self.stride = whole_number("Conv2D", "stride", stride)
        if padding == "same":
            if self.stride != 1 or self.kh % 2 == 0 or self.kw % 2 == 0:
                raise ConfigError(
                    f"Conv2D padding 'same' needs stride 1 and odd kernel sizes, got stride {self.stride} "
                    f"and kernel {self.kh}x{self.kw}"
                )
            self.padding, self.pads = "same", ((self.kh - 1) // 2, (self.kw - 1) // 2)
        else:
            self.padding = whole_number("Conv2D", "padding", padding, minimum=0)
            self.pads = (self.padding, self.padding)
        self.init = init  # an unknown scheme is refused by initial_weight below
        shape = (self.out_channels, self.in_channels, self.kh, self.kw)
        self.params["W"] = self._new_weight(shape, init, rng)
        if not isinstance(bias, bool):
            raise ConfigError(f"Conv2D bias must be true or false, got {bias!r}")
        self.bias = bias
        if bias:
            self.params["b"] = self._zeros((self.out_channels,))

    def forward(self, x, train=True, draws=None):
        return convolution.forward(self.backend, self.plan(x.shape), x, self.params["W"],
                                   self.params.get("b"), train)  # fmt: skip

    def backward(self, saved, dy, need_dx=True):
        return convolution.backward(self.backend, saved, dy, self.params["W"], self.bias, need_dx)

    def plan(self, input_shape) -> convolution.Plan:
        """How this layer runs on inputs of ``input_shape`` (N, C, H, W): chosen once per shape."""
        n, c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got {c}")
        self.output_shape((c, h, w))  # a kernel that does not fit is a ConfigError
        kernel = (self.kh, self.kw)
        return convolution.plan(self.backend, (n, c, h, w), self.out_channels, kernel, self.stride,
                                self.pads, self.dtype)  # fmt: skip

    def output_shape(self, input_shape):
        c, h, w = input_shape
        oh = F.conv_output_size(h, self.kh, self.stride, self.pads[0])
        ow = F.conv_output_size(w, self.kw, self.stride, self.pads[1])
        if oh < 1 or ow < 1:
            raise ConfigError(f"Conv2D kernel {self.kh}x{self.kw} does not fit an input of {h}x{w}")
        return (self.out_channels, oh, ow)

    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": [self.kh, self.kw],
            "stride": self.stride,
            "padding": self.padding,
            "init": self.init,
            "bias": self.bias,
        }

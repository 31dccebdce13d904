"""2-D convolution over NCHW inputs, as an im2col matrix product computed channels last (the kernels and
their plan are in :mod:`cnnx.nn.convolution`)."""

from __future__ import annotations

from cnnx.errors import ConfigError

from .. import convolution
from .. import functional as F
from ..registry import INIT, Choice, Flag, OneOf, Size, SizePair, pair, register_layer
from .base import Layer


def _param_shapes(config) -> dict:
    """W (out_channels, in_channels, kh, kw), then b (out_channels,) unless ``bias`` is off."""
    out_channels, in_channels = config["out_channels"], config["in_channels"]
    shapes = {"W": (out_channels, in_channels, *pair(config["kernel_size"]))}
    return {**shapes, "b": (out_channels,)} if config["bias"] else shapes


def _same_padding_fits(config) -> str | None:
    """'same' padding keeps the height and width only at stride 1 with odd kernel sizes."""
    (kh, kw), stride = pair(config["kernel_size"]), config["stride"]
    if config["padding"] == "same" and (stride != 1 or kh % 2 == 0 or kw % 2 == 0):
        return (f"padding 'same' needs stride 1 and odd kernel sizes, got stride {stride} and kernel "
                f"{kh}x{kw}")  # fmt: skip
    return None


def _pads(config) -> tuple[int, int]:
    """Rows and columns of zeros on each side: (k - 1) / 2 for 'same', else the padding."""
    kh, kw = pair(config["kernel_size"])
    return ((kh - 1) // 2, (kw - 1) // 2) if config["padding"] == "same" else (config["padding"],) * 2


def _output_shape(config, input_shape) -> tuple[int, int, int]:
    """(out_channels, OH, OW) for an input (C, H, W)."""
    (kh, kw), (ph, pw), (_, h, w) = pair(config["kernel_size"]), _pads(config), input_shape
    oh = F.conv_output_size(h, kh, config["stride"], ph)
    ow = F.conv_output_size(w, kw, config["stride"], pw)
    if oh < 1 or ow < 1:
        raise ConfigError(f"Conv2D kernel {kh}x{kw} does not fit an input of {h}x{w}")
    return (config["out_channels"], oh, ow)


def _scratch(config, input_shape, output_shape) -> int:
    """Values per image a forward allocates besides its output: the padded input and its unfolded
    windows (OH*OW rows of kh*kw*C numbers)."""
    (kh, kw), (ph, pw), (c, h, w) = pair(config["kernel_size"]), _pads(config), input_shape
    return c * (h + 2 * ph) * (w + 2 * pw) + output_shape[1] * output_shape[2] * kh * kw * c


@register_layer(
    fields={"in_channels": Size(), "out_channels": Size(), "kernel_size": SizePair(), "stride": Size(),
            "padding": OneOf(Size(minimum=0), Choice("same")), "init": INIT, "bias": Flag()},
    param_shapes=_param_shapes, output_shape=_output_shape, check=_same_padding_fits, scratch=_scratch,
)  # fmt: skip
class Conv2D(Layer):
    """Cross-correlation of (N, C, H, W) inputs with F kernels of shape (C, kh, kw), plus a bias per kernel
    (none with ``bias=False``: before a batch norm, which would cancel it).

    Weights ``W`` have shape (out_channels, in_channels, kh, kw) and ``b`` (out_channels,). The output is
    (N, F, OH, OW) with OH = (H + 2*padding - kh) // stride + 1, and likewise OW. ``padding="same"``
    (stride 1, odd kernel sizes) pads (kh - 1) / 2 rows and (kw - 1) / 2 columns on each side, so the
    output keeps the input's height and width.

    Mathematics: docs/math.md#conv2d
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
        self.in_channels, self.out_channels, self.stride = int(in_channels), int(out_channels), int(stride)
        self.kh, self.kw = pair(kernel_size)
        self.padding = "same" if padding == "same" else int(padding)
        self.init, self.bias = init, bias
        self.pads = _pads(self.config())
        shapes = self.param_shapes()
        self.params["W"] = self._new_weight(shapes["W"], init, rng)
        if bias:
            self.params["b"] = self._zeros(shapes["b"])

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

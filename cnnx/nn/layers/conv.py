"""2-D convolution over NCHW inputs, as an im2col matrix product computed channels last."""

from __future__ import annotations

from cnnx.checks import whole_number
from cnnx.errors import ConfigError

from .. import functional as F
from ..registry import INIT, Size, SizePair, register_layer
from .base import Layer


def _pair(value, name: str) -> tuple[int, int]:
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2:
        raise ConfigError(f"Conv2D {name} must be a positive int or a pair of them, got {value!r}")
    return whole_number("Conv2D", name, items[0]), whole_number("Conv2D", name, items[1])


def _kernel_area(kernel_size) -> int:
    return kernel_size * kernel_size if isinstance(kernel_size, int) else kernel_size[0] * kernel_size[1]


@register_layer(
    fields={"in_channels": Size(), "out_channels": Size(), "kernel_size": SizePair(), "stride": Size(),
            "padding": Size(minimum=0), "init": INIT},
    parameters=lambda c: c["out_channels"] * (c["in_channels"] * _kernel_area(c.get("kernel_size", 3)) + 1),
)  # fmt: skip
class Conv2D(Layer):
    """Cross-correlation of (N, C, H, W) inputs with F kernels of shape (C, kh, kw), plus a bias per kernel.

    Weights ``W`` have shape (out_channels, in_channels, kh, kw) and ``b`` (out_channels,). The output is
    (N, F, OH, OW) with OH = (H + 2*padding - kh) // stride + 1, and likewise OW.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        stride: int = 1,
        padding: int = 0,
        *,
        init: str = "xavier",
        rng=None,
        backend=None,
        dtype="float32",
    ):
        super().__init__(backend=backend, dtype=dtype)
        self.in_channels = whole_number("Conv2D", "in_channels", in_channels)
        self.out_channels = whole_number("Conv2D", "out_channels", out_channels)
        self.kh, self.kw = _pair(kernel_size, "kernel_size")
        self.stride = whole_number("Conv2D", "stride", stride)
        self.padding = whole_number("Conv2D", "padding", padding, minimum=0)
        self.init = init  # an unknown scheme is refused by initial_weight below
        shape = (self.out_channels, self.in_channels, self.kh, self.kw)
        self.params["W"] = self._new_weight(shape, init, rng)
        self.params["b"] = self._zeros((self.out_channels,))
        self.cols = self.x_shape = self._cols_cache = None

    def forward(self, x, train=True):
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got {c}")
        oh, ow = self.output_shape((c, h, w))[1:]
        xp = self.xp
        # Channels last inside: each window row is a contiguous run and the product below is one GEMM
        # whose (N*OH*OW, F) result is already the NHWC output (see functional.py).
        x = F.pad_nhwc(xp, F.to_nhwc(x), self.padding)  # (N, H', W', C)
        kernels = self._kernel_matrix()  # (F, K)
        if self._by_tap:
            buffer = self._cols_buffer((self.kh, self.kw, n, oh, ow), train)
            cols = F.im2col_taps(xp, x, self.kh, self.kw, self.stride, out=buffer)  # (K, N*OH*OW)
            y = xp.matmul(cols.T, kernels.T)  # (N*OH*OW, F)
        else:
            buffer = self._cols_buffer((n, oh, ow, self.kh, self.kw, c), train)
            cols = F.im2col_nhwc(xp, x, self.kh, self.kw, self.stride, out=buffer)  # (N*OH*OW, K)
            y = xp.matmul(cols, kernels.T)  # (N*OH*OW, F)
        F.bias_add_rows(xp, y, self.params["b"], oh * ow)
        self.cols, self.x_shape = (cols, x.shape) if train else (None, None)
        return F.to_nchw(y.reshape(n, oh, ow, self.out_channels))

    def backward(self, dy):
        dy = self._param_grads(dy)
        if self._by_tap:
            planes = self.xp.matmul(self._kernel_matrix().T, dy.T)  # (K, N*OH*OW): one plane per tap, C = 1
        else:
            # One product per kernel offset (batched): each plane comes out contiguous, ready to fold back.
            planes = self.xp.matmul(dy, F.kernel_planes(self.params["W"]))  # (kh*kw, N*OH*OW, C)
        dx = F.col2im_nhwc(self.xp, planes, self.x_shape, self.kh, self.kw, self.stride)  # (N, H', W', C)
        p = self.padding
        if p:
            dx = dx[:, p : dx.shape[1] - p, p : dx.shape[2] - p]
        return F.to_nchw(dx)

    def backward_params(self, dy) -> None:
        self._param_grads(dy)

    def _param_grads(self, dy):
        """Fill grads from dy (N, F, OH, OW); returns dy as the (N*OH*OW, F) matrix dx is made from."""
        xp = self.xp
        n, f, oh, ow = dy.shape
        dy = F.to_nhwc(dy).reshape(n * oh * ow, f)  # free when dy is channels last, as ours is
        dw = xp.matmul(self.cols, dy).T if self._by_tap else xp.matmul(dy.T, self.cols)  # (F, K)
        self.grads["W"] = dw.reshape(f, self.kh, self.kw, self.in_channels).transpose(0, 3, 1, 2).copy()
        self.grads["b"] = F.bias_grad_rows(dy, oh * ow)
        self.cols = None
        return dy

    @property
    def _by_tap(self) -> bool:
        """Single-channel input (grey images): unfold tap by tap, (K, N*OH*OW), instead of window by window.

        A window of one channel is only kh*kw numbers, which im2col_nhwc would copy a few at a time;
        tap by tap it is kh*kw copies of whole image rows (five times faster for the first layer of the
        seed CNN), and the products below take the transposed matrix at no cost.
        """
        return self.in_channels == 1

    def _kernel_matrix(self):
        """W as (F, kh*kw*C), the (i, j, c) order of an im2col_nhwc row (a small copy each step)."""
        return self.params["W"].transpose(0, 2, 3, 1).reshape(self.out_channels, -1)

    def _cols_buffer(self, shape, train: bool):
        """The im2col buffer, kept from step to step: the same shape comes back every step, and refilling
        it spares allocating (and page-faulting) a fresh N*OH*OW x K array each time (measured: 40 against
        52 ms per seed-CNN step at batch 128).

        Training sets its size. Inference borrows it when the shape fits (the columns are not kept, and
        a backward needs a training forward first anyway) but never grows it, so evaluating in large
        batches leaves no large buffer behind; it gets None, a fresh array, otherwise.
        """
        if self._cols_cache is not None and self._cols_cache.shape == shape:
            return self._cols_cache
        if not train:
            return None
        self._cols_cache = self.xp.empty(shape, dtype=self.dtype)
        return self._cols_cache

    def output_shape(self, input_shape):
        c, h, w = input_shape
        oh = F.conv_output_size(h, self.kh, self.stride, self.padding)
        ow = F.conv_output_size(w, self.kw, self.stride, self.padding)
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
        }

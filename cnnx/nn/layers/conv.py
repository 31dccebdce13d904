"""2-D convolution over NCHW inputs, as an im2col matrix product computed channels last."""

from __future__ import annotations

from cnnx.errors import ConfigError

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
        self.cols = self.x = self.x_shape = self._cols_cache = None
        self.block = None

    def forward(self, x, train=True):
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got {c}")
        oh, ow = self.output_shape((c, h, w))[1:]
        xp = self.xp
        # Channels last inside: each window row is a contiguous run and the product below is one GEMM
        # whose (N*OH*OW, F) result is already the NHWC output (see functional.py).
        x = F.pad_nhwc(xp, F.to_nhwc(x), self.pads)  # (N, H', W', C)
        kernels, b = self._kernel_matrix(), self.params.get("b")  # (K, F), (F,) or None
        q, k = oh * ow, self.kh * self.kw * c  # output pixels per image, numbers per window
        y = xp.empty((n * q, self.out_channels), dtype=self.dtype)
        block = self._block(n, q * k * y.itemsize)
        self.block, self.x_shape = block, (x.shape if train else None)
        # The blocked backward unfolds the padded input again; the whole-batch one keeps the columns.
        self.cols, self.x = None, (x if train and block < n else None)
        if block < n:  # unfold a few images at a time, into a buffer that stays in cache

            def part(s):
                buffer = xp.empty(
                    (min(block, s.stop - s.start), oh, ow, self.kh, self.kw, c), dtype=self.dtype
                )
                for start in range(s.start, s.stop, block):
                    stop = min(start + block, s.stop)
                    cols = self._unfold(x[start:stop], buffer[: stop - start])
                    xp.matmul(cols, kernels, out=y[start * q : stop * q])
                    if b is not None:
                        F.bias_add_rows(xp, y[start * q : stop * q], b, q)

            self.backend.split_batch(part, n, n * q * k)
            return F.to_nchw(y.reshape(n, oh, ow, self.out_channels))
        # The whole batch at once (a GPU; or few numbers per image): the columns are kept for backward.
        if self._by_tap:
            buffer = self._cols_buffer((self.kh, self.kw, n, oh, ow), train)
            cols = buffer.reshape(k, n * q)
        else:
            buffer = self._cols_buffer((n, oh, ow, self.kh, self.kw, c), train)
            cols = buffer.reshape(n * q, k)

        def whole(s):  # images s: unfold them, multiply their rows, add the bias
            rows = slice(s.start * q, s.stop * q)
            if self._by_tap:
                F.fill_taps(xp, x[s], self.kh, self.kw, self.stride, buffer[:, :, s])
                xp.matmul(cols[:, rows].T, kernels, out=y[rows])
            else:
                F.fill_windows(xp, x[s], self.kh, self.kw, self.stride, buffer[s])
                xp.matmul(cols[rows], kernels, out=y[rows])
            if b is not None:
                F.bias_add_rows(xp, y[rows], b, q)

        self.backend.split_batch(whole, n, cols.size)
        self.cols = cols if train else None
        return F.to_nchw(y.reshape(n, oh, ow, self.out_channels))

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def backward_params(self, dy) -> None:
        self._backward(dy, input_grad=False)

    def _backward(self, dy, input_grad: bool):
        xp, (n, f, oh, ow) = self.xp, dy.shape
        q, c, x_shape = oh * ow, self.in_channels, self.x_shape
        dy = F.to_nhwc(dy).reshape(n * q, f)  # free when dy is channels last, as ours is
        if self.bias:
            self.grads["b"] = F.bias_grad_rows(dy, q)
        dw = self._blocked_weight_grad(dy, oh, ow) if self.cols is None else self._whole_weight_grad(dy)
        self.grads["W"] = xp.ascontiguousarray(dw.reshape(self.kh, self.kw, c, f).transpose(3, 2, 0, 1))
        self.cols = self.x = None
        if not input_grad:
            return None
        ph, pw = self.pads
        if self._gathers_input_grad(n, ph, pw):
            return F.to_nchw(self._gathered_input_grad(dy, (n, oh, ow, f)))
        dx = self._input_grad(dy, x_shape, oh, ow)
        if ph or pw:
            dx = dx[:, ph : dx.shape[1] - ph, pw : dx.shape[2] - pw]
        return F.to_nchw(dx)

    def _gathers_input_grad(self, n: int, ph: int, pw: int) -> bool:
        """Whether dx is better made as a convolution of dy (see _gathered_input_grad) than by folding
        every tap's product back: for stride 1 on the CPU's blocked path, where the layer does not widen
        (F <= C). Measured on 2 cores, batch 128: 32->32 at 28x28 29 -> 23 ms, 16->16 14 -> 12 ms; a
        widening 32->64 layer went the other way (8.8 -> 10.6 ms). A GPU (one block) keeps the fold."""
        fits = ph <= self.kh - 1 and pw <= self.kw - 1
        narrow = self.out_channels <= self.in_channels and not self._by_tap
        return self.stride == 1 and fits and narrow and self.block < n

    def _gathered_input_grad(self, dy, dy_shape):
        """dx (N, H, W, C) of a stride-1 convolution as the 'valid' correlation of dy, padded by kernel
        size - 1 - padding, with the kernels flipped and transposed: every input pixel gathers what the
        windows over it send back. Unfolded and multiplied block by block, like the forward."""
        xp, n, f = self.xp, dy_shape[0], dy_shape[3]
        kh, kw, (ph, pw), c = self.kh, self.kw, self.pads, self.in_channels
        dy = F.pad_nhwc(xp, dy.reshape(dy_shape), (kh - 1 - ph, kw - 1 - pw))
        h, w = dy.shape[1] - kh + 1, dy.shape[2] - kw + 1  # the input's own height and width
        flipped = xp.ascontiguousarray(self.params["W"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
        flipped = flipped.reshape(kh * kw * f, c)  # rows in the (i, j, f) order of an unfolded window of dy
        dx = xp.empty((n * h * w, c), dtype=dy.dtype)
        block = self.backend.cache_block(n, h * w * kh * kw * f * dx.itemsize)

        def part(s):
            buffer = xp.empty((min(block, s.stop - s.start), h, w, kh, kw, f), dtype=dy.dtype)
            for start in range(s.start, s.stop, block):
                stop = min(start + block, s.stop)
                F.fill_windows(xp, dy[start:stop], kh, kw, 1, buffer[: stop - start])
                windows = buffer[: stop - start].reshape(-1, kh * kw * f)
                xp.matmul(windows, flipped, out=dx[start * h * w : stop * h * w])

        self.backend.split_batch(part, n, n * h * w * kh * kw * f)
        return dx.reshape(n, h, w, c)

    def _blocked_weight_grad(self, dy, oh, ow):
        """dW (K, F) block by block: each block's windows are unfolded again (the forward kept none) and
        multiplied by the block's rows of dy while they are in cache. The blocks are the forward's, fixed
        by the batch and the layer, and their shares of dW are added in block order, so the cut over
        threads changes no number."""
        xp, block, x = self.xp, self.block, self.x
        n, q, k, f = x.shape[0], oh * ow, self.kh * self.kw * self.in_channels, dy.shape[1]
        shares = xp.empty((-(-n // block), k, f), dtype=dy.dtype)

        def part(s):  # blocks s
            buffer = xp.empty((block, oh, ow, self.kh, self.kw, self.in_channels), dtype=dy.dtype)
            for i in range(s.start, s.stop):
                start, stop = i * block, min(n, (i + 1) * block)
                cols = self._unfold(x[start:stop], buffer[: stop - start])
                xp.matmul(cols.T, dy[start * q : stop * q], out=shares[i])

        self.backend.split_batch(part, shares.shape[0], n * q * k)
        return shares.sum(axis=0)

    def _whole_weight_grad(self, dy):
        """dW (K, F) from the kept columns."""
        xp, k = self.xp, self.kh * self.kw * self.in_channels
        if self._by_tap:  # (K, rows) @ (rows, F): a tiny result from long sums, fastest in one piece
            return xp.matmul(self.cols, dy)
        dw = xp.empty((k, dy.shape[1]), dtype=dy.dtype)

        def part(s):  # rows s of dW: each part sums over every row of dy, so the cut changes no number
            dw[s] = xp.matmul(self.cols[:, s].T, dy)  # (K part, rows) @ (rows, F)

        self.backend.split_batch(part, k, self.cols.size)
        return dw

    def _input_grad(self, dy, x_shape, oh, ow):
        """dx (N, H', W', C), image by image, from the kernels: what every tap sends back, folded in."""
        xp, n, q = self.xp, x_shape[0], oh * ow
        dx = xp.empty(x_shape, dtype=dy.dtype)
        kernels = self._kernel_matrix() if self._by_tap else F.kernel_planes(self.params["W"])

        def part(s):
            rows = slice(s.start * q, s.stop * q)
            dx[s] = 0
            if self._by_tap:
                planes = xp.matmul(kernels, dy[rows].T)  # (K, rows): one plane per tap, C = 1
                F.fold_planes(xp, planes.reshape(self.kh, self.kw, -1, oh, ow, 1), dx[s], self.stride)
            else:  # one product per kernel offset, each added in while it is in cache
                F.fold_tap_products(xp, dy[rows], kernels, dx[s], self.kh, self.kw, self.stride)

        self.backend.split_batch(part, n, n * q * self.kh * self.kw * dx.shape[3])
        return dx

    def _block(self, n: int, window_bytes: int) -> int:
        """Images per unfolded block: the whole batch for single-channel input (see _by_tap) and where
        the backend says so (a GPU); otherwise as many as fit in cache."""
        return n if self._by_tap else self.backend.cache_block(n, window_bytes)

    def _unfold(self, x, buffer):
        """The windows of images ``x`` (padded NHWC) as rows, written into ``buffer``."""
        F.fill_windows(self.xp, x, self.kh, self.kw, self.stride, buffer)
        return buffer.reshape(-1, self.kh * self.kw * self.in_channels)

    @property
    def _by_tap(self) -> bool:
        """Single-channel input (grey images): unfold tap by tap, (K, N*OH*OW), instead of window by window.

        A window of one channel is only kh*kw numbers, which im2col_nhwc would copy a few at a time;
        tap by tap it is kh*kw copies of whole image rows (five times faster for the first layer of the
        seed CNN), and the products below take the transposed matrix at no cost.
        """
        return self.in_channels == 1

    def _kernel_matrix(self):
        """W as one kernel per column, (kh*kw*C, F) in the (i, j, c) order of an im2col_nhwc row: a small
        contiguous copy each step."""
        w = self.params["W"]
        return self.xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, self.out_channels)

    def _cols_buffer(self, shape, train: bool):
        """The im2col buffer, kept from step to step: the same shape comes back every step, and refilling
        it spares allocating (and page-faulting) a fresh N*OH*OW x K array each time (measured: 40 against
        52 ms per seed-CNN step at batch 128).

        Training sets its size. Inference borrows it when the shape fits (the columns are not kept, and
        a backward needs a training forward first anyway) but never grows it, so evaluating in large
        batches leaves no large buffer behind; it gets a fresh array otherwise.
        """
        if self._cols_cache is not None and self._cols_cache.shape == shape:
            return self._cols_cache
        fresh = self.xp.empty(shape, dtype=self.dtype)
        if train:
            self._cols_cache = fresh
        return fresh

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

"""2-D convolution kernels: an im2col matrix product computed channels last, run by a plan.

:func:`plan` chooses, once per input shape and backend, how a convolution runs (:class:`Plan`):

- **blocked** (the CPU's way): a few images are unfolded at a time, into a buffer that stays in cache,
  and multiplied at once; the backward unfolds them again for dW. dx is either *folded* (every tap's
  product added back into the input) or, for a layer that does not widen at stride 1, *gathered* (a
  convolution of dy with the flipped kernels);
- **whole batch** (a GPU: one large kernel is fastest there): the whole batch is unfolded, and the
  columns are kept for the backward; dx is folded;
- **by tap** (single-channel input, on any backend): the whole batch is unfolded tap by tap, (K,
  N*OH*OW), whose rows are whole shifted images: five times faster than window by window for the
  first layer of the seed CNN.

:func:`forward` returns the output and what :func:`backward` needs (the plan rides along), so a
layer keeps nothing about a batch. Every part of every kernel gives the same numbers however a
backend cuts the batch over its threads.

Mathematics: docs/math.md#conv2d
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import functional as F


@dataclass(frozen=True)
class Plan:
    """How a convolution of (N, C, H, W) inputs with F kernels (kh, kw) runs on one backend."""

    n: int
    c: int
    h: int  # the padded input's height and width
    w: int
    f: int
    kh: int
    kw: int
    stride: int
    pads: tuple[int, int]
    oh: int
    ow: int
    block: int  # images per unfolded block; n when the whole batch is unfolded at once
    by_tap: bool  # single-channel input: unfolded tap by tap
    gathers_dx: bool  # dx as a correlation of dy with the flipped kernels; folded otherwise
    gather_block: int  # images per unfolded block of dy when dx is gathered

    @property
    def blocked(self) -> bool:
        return self.block < self.n

    @property
    def q(self) -> int:
        """Output pixels per image."""
        return self.oh * self.ow

    @property
    def k(self) -> int:
        """Numbers per unfolded window."""
        return self.kh * self.kw * self.c


@functools.lru_cache(maxsize=256)
def plan(backend, x_shape: tuple, f: int, kernel: tuple, stride: int, pads: tuple, dtype) -> Plan:
    """The plan of a convolution of inputs ``x_shape`` (N, C, H, W), F kernels of size ``kernel`` (kh,
    kw), ``stride`` and ``pads`` (rows, columns) on ``backend`` in ``dtype``.

    Whole batch for single-channel input (by tap) and where the backend takes the batch at once;
    otherwise blocks of as many images as ``backend.cache_block`` fits. dx is gathered for stride 1 on
    the blocked path where the layer does not widen (F <= C) and the padding is at most kernel size - 1.
    Measured on 2 cores, batch 128: 32->32 at 28x28 29 -> 23 ms, 16->16 14 -> 12 ms; a widening 32->64
    layer went the other way (8.8 -> 10.6 ms).
    """
    n, c, h, w = x_shape
    (kh, kw), (ph, pw), itemsize = kernel, pads, dtype.itemsize
    oh, ow = F.conv_output_size(h, kh, stride, ph), F.conv_output_size(w, kw, stride, pw)
    by_tap = c == 1
    block = n if by_tap else backend.cache_block(n, oh * ow * kh * kw * c * itemsize)
    fits = ph <= kh - 1 and pw <= kw - 1
    gathers = stride == 1 and fits and f <= c and not by_tap and block < n
    gather_block = backend.cache_block(n, h * w * kh * kw * f * itemsize) if gathers else n
    return Plan(n, c, h + 2 * ph, w + 2 * pw, f, kh, kw, stride, pads, oh, ow, block, by_tap, gathers,
                gather_block)  # fmt: skip


def forward(backend, plan: Plan, x, weight, bias, train: bool):
    """``(y, saved)``: the convolution of NCHW ``x`` with ``weight`` (F, C, kh, kw) plus ``bias`` (F,) or
    None, handed on as NCHW over NHWC memory; ``saved`` is the plan and the padded input (blocked) or
    the columns (whole batch), None unless ``train``."""
    xp, p = backend.xp, plan
    # Channels last inside: each window row is a contiguous run and the product below is one GEMM
    # whose (N*OH*OW, F) result is already the NHWC output (see functional.py).
    x = F.pad_nhwc(xp, F.to_nhwc(x), p.pads)  # (N, H', W', C)
    kernels = kernel_matrix(xp, weight)  # (K, F)
    y = xp.empty((p.n * p.q, p.f), dtype=weight.dtype)
    if p.blocked:
        _blocked_forward(backend, p, x, kernels, bias, y)
        kept = x  # the backward unfolds it again
    else:
        kept = _whole_forward(backend, p, x, kernels, bias, y)
    return F.to_nchw(y.reshape(p.n, p.oh, p.ow, p.f)), ((p, kept) if train else None)


def backward(backend, saved, dy, weight, has_bias: bool, need_dx: bool = True):
    """``(dx, grads)`` for the gradient ``dy`` (N, F, OH, OW) of the forward that gave ``saved``: the
    NCHW input gradient (None without ``need_dx``) and ``{"W": ..., "b": ...}`` (no b without
    ``has_bias``)."""
    xp, (p, kept) = backend.xp, saved
    dy = F.to_nhwc(dy).reshape(p.n * p.q, p.f)  # free when dy is channels last, as ours is
    grads = {"b": F.bias_grad_rows(dy, p.q)} if has_bias else {}
    dw = _blocked_weight_grad(backend, p, kept, dy) if p.blocked else _whole_weight_grad(backend, p, kept, dy)
    grads["W"] = xp.ascontiguousarray(dw.reshape(p.kh, p.kw, p.c, p.f).transpose(3, 2, 0, 1))
    if not need_dx:
        return None, grads
    if p.gathers_dx:
        return F.to_nchw(_gathered_input_grad(backend, p, dy, weight)), grads
    (ph, pw), h, w = p.pads, p.h, p.w
    dx = _folded_input_grad(backend, p, dy, weight)
    return F.to_nchw(dx[:, ph : h - ph, pw : w - pw] if ph or pw else dx), grads


def kernel_matrix(xp, weight):
    """A weight (F, C, kh, kw) as one kernel per column, (kh*kw*C, F) in the (i, j, c) order of an
    unfolded window: a small contiguous copy each step."""
    return xp.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(-1, weight.shape[0])


def _unfold(xp, p: Plan, x, buffer):
    """The windows of images ``x`` (padded NHWC) as rows, written into ``buffer``."""
    F.fill_windows(xp, x, p.kh, p.kw, p.stride, buffer)
    return buffer.reshape(-1, p.k)


def _blocked_forward(backend, p: Plan, x, kernels, bias, y) -> None:
    """Unfold a few images at a time, into a buffer that stays in cache, and multiply them into ``y``."""
    xp, q = backend.xp, p.q

    def part(s):
        buffer = xp.empty((min(p.block, s.stop - s.start), p.oh, p.ow, p.kh, p.kw, p.c), dtype=y.dtype)
        for start in range(s.start, s.stop, p.block):
            stop = min(start + p.block, s.stop)
            cols = _unfold(xp, p, x[start:stop], buffer[: stop - start])
            xp.matmul(cols, kernels, out=y[start * q : stop * q])
            if bias is not None:
                F.bias_add_rows(xp, y[start * q : stop * q], bias, q)

    backend.split_batch(part, p.n, p.n * q * p.k)


def _whole_forward(backend, p: Plan, x, kernels, bias, y):
    """Unfold the whole batch (by tap, or window by window) and multiply it into ``y``; returns the
    columns, (K, N*OH*OW) by tap, (N*OH*OW, K) otherwise."""
    xp, q = backend.xp, p.q
    if p.by_tap:
        buffer = xp.empty((p.kh, p.kw, p.n, p.oh, p.ow), dtype=y.dtype)
        cols = buffer.reshape(p.k, p.n * q)
    else:
        buffer = xp.empty((p.n, p.oh, p.ow, p.kh, p.kw, p.c), dtype=y.dtype)
        cols = buffer.reshape(p.n * q, p.k)

    def part(s):  # images s: unfold them, multiply their rows, add the bias
        rows = slice(s.start * q, s.stop * q)
        if p.by_tap:
            F.fill_taps(xp, x[s], p.kh, p.kw, p.stride, buffer[:, :, s])
            xp.matmul(cols[:, rows].T, kernels, out=y[rows])
        else:
            F.fill_windows(xp, x[s], p.kh, p.kw, p.stride, buffer[s])
            xp.matmul(cols[rows], kernels, out=y[rows])
        if bias is not None:
            F.bias_add_rows(xp, y[rows], bias, q)

    backend.split_batch(part, p.n, cols.size)
    return cols


def _blocked_weight_grad(backend, p: Plan, x, dy):
    """dW (K, F) block by block: each block's windows are unfolded again (the forward kept none) and
    multiplied by the block's rows of dy while they are in cache. The blocks are the forward's, fixed
    by the plan, and their shares of dW are added in block order, so the cut over threads changes no
    number."""
    xp, n, q, block = backend.xp, p.n, p.q, p.block
    shares = xp.empty((-(-n // block), p.k, p.f), dtype=dy.dtype)

    def part(s):  # blocks s
        buffer = xp.empty((block, p.oh, p.ow, p.kh, p.kw, p.c), dtype=dy.dtype)
        for i in range(s.start, s.stop):
            start, stop = i * block, min(n, (i + 1) * block)
            cols = _unfold(xp, p, x[start:stop], buffer[: stop - start])
            xp.matmul(cols.T, dy[start * q : stop * q], out=shares[i])

    backend.split_batch(part, shares.shape[0], n * q * p.k)
    return shares.sum(axis=0)


def _whole_weight_grad(backend, p: Plan, cols, dy):
    """dW (K, F) from the kept columns."""
    xp = backend.xp
    if p.by_tap:  # (K, rows) @ (rows, F): a tiny result from long sums, fastest in one piece
        return xp.matmul(cols, dy)
    dw = xp.empty((p.k, p.f), dtype=dy.dtype)

    def part(s):  # rows s of dW: each part sums over every row of dy, so the cut changes no number
        dw[s] = xp.matmul(cols[:, s].T, dy)  # (K part, rows) @ (rows, F)

    backend.split_batch(part, p.k, cols.size)
    return dw


def _folded_input_grad(backend, p: Plan, dy, weight):
    """dx of the padded input (N, H', W', C), image by image, from the kernels: what every tap sends
    back, folded in."""
    xp, q = backend.xp, p.q
    dx = xp.empty((p.n, p.h, p.w, p.c), dtype=dy.dtype)
    kernels = kernel_matrix(xp, weight) if p.by_tap else F.kernel_planes(weight)

    def part(s):
        rows = slice(s.start * q, s.stop * q)
        dx[s] = 0
        if p.by_tap:
            planes = xp.matmul(kernels, dy[rows].T)  # (K, rows): one plane per tap, C = 1
            F.fold_planes(xp, planes.reshape(p.kh, p.kw, -1, p.oh, p.ow, 1), dx[s], p.stride)
        else:  # one product per kernel offset, each added in while it is in cache
            F.fold_tap_products(xp, dy[rows], kernels, dx[s], p.kh, p.kw, p.stride)

    backend.split_batch(part, p.n, p.n * q * p.kh * p.kw * p.c)
    return dx


def _gathered_input_grad(backend, p: Plan, dy, weight):
    """dx (N, H, W, C) of a stride-1 convolution as the 'valid' correlation of dy, padded by kernel
    size - 1 - padding, with the kernels flipped and transposed: every input pixel gathers what the
    windows over it send back. Unfolded and multiplied block by block, like the forward."""
    xp, n, f, c, kh, kw, (ph, pw) = backend.xp, p.n, p.f, p.c, p.kh, p.kw, p.pads
    dy = F.pad_nhwc(xp, dy.reshape(n, p.oh, p.ow, f), (kh - 1 - ph, kw - 1 - pw))
    h, w = dy.shape[1] - kh + 1, dy.shape[2] - kw + 1  # the input's own height and width
    flipped = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
    flipped = flipped.reshape(kh * kw * f, c)  # rows in the (i, j, f) order of an unfolded window of dy
    dx = xp.empty((n * h * w, c), dtype=dy.dtype)
    block = p.gather_block

    def part(s):
        buffer = xp.empty((min(block, s.stop - s.start), h, w, kh, kw, f), dtype=dy.dtype)
        for start in range(s.start, s.stop, block):
            stop = min(start + block, s.stop)
            F.fill_windows(xp, dy[start:stop], kh, kw, 1, buffer[: stop - start])
            windows = buffer[: stop - start].reshape(-1, kh * kw * f)
            xp.matmul(windows, flipped, out=dx[start * h * w : stop * h * w])

    backend.split_batch(part, n, n * h * w * kh * kw * f)
    return dx.reshape(n, h, w, c)

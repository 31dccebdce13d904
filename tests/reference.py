"""Naive, obviously-correct reference kernels in plain NumPy loops: the fast kernels must match these."""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride=1, padding=0):
    """Direct convolution (cross-correlation) by nested loops over output positions."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, f, oh, ow))
    for s in range(n):
        for k in range(f):
            for i in range(oh):
                for j in range(ow):
                    patch = xp[s, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                    y[s, k, i, j] = np.sum(patch * w[k]) + b[k]
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0):
    """Gradients (dx, dW, db) of conv2d by the same loops, accumulating each output's contribution."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros(w.shape)
    for s in range(n):
        for k in range(f):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    rows = slice(i * stride, i * stride + kh)
                    cols = slice(j * stride, j * stride + kw)
                    dw[k] += dy[s, k, i, j] * xp[s, :, rows, cols]
                    dxp[s, :, rows, cols] += dy[s, k, i, j] * w[k]
    dx = dxp[:, :, padding : padding + h, padding : padding + wd]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def maxpool2d(x, k, stride):
    """Loop max-pooling (floor mode) and its gradient routing: returns (y, argmax positions)."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, c, oh, ow))
    where = {}
    for s in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    window = x[s, ch, i * stride : i * stride + k, j * stride : j * stride + k]
                    flat = int(np.argmax(window))  # the first maximum in row-major order
                    y[s, ch, i, j] = window.flat[flat]
                    where[s, ch, i, j] = (i * stride + flat // k, j * stride + flat % k)
    return y, where


def maxpool2d_backward(x, k, stride, dy):
    _, where = maxpool2d(x, k, stride)
    dx = np.zeros(x.shape)
    for (s, ch, i, j), (r, q) in where.items():
        dx[s, ch, r, q] += dy[s, ch, i, j]
    return dx


def dense(x, w, b):
    """Per-sample loops of y = x W + b."""
    return np.array(
        [
            [sum(x[s, i] * w[i, o] for i in range(w.shape[0])) + b[o] for o in range(w.shape[1])]
            for s in range(x.shape[0])
        ]
    )


def softmax_cross_entropy(logits, labels):
    loss = 0.0
    for row, label in zip(logits, labels, strict=True):
        m = row.max()
        loss += -(row[label] - m - np.log(np.exp(row - m).sum()))
    return loss / len(labels)


class TextbookAdam:
    """Adam exactly as written in Kingma & Ba (2015), Algorithm 1, for one parameter array."""

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, p, g):
        if self.m is None:
            self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def dense_backward(x, w, dy):
    """Gradients (dx, dW, db) of y = x W + b by per-element loops over the samples and both features."""
    n, fin = x.shape
    fout = w.shape[1]
    dx, dw, db = np.zeros((n, fin)), np.zeros((fin, fout)), np.zeros(fout)
    for s in range(n):
        for o in range(fout):
            db[o] += dy[s, o]
            for i in range(fin):
                dx[s, i] += dy[s, o] * w[i, o]
                dw[i, o] += x[s, i] * dy[s, o]
    return dx, dw, db


class TextbookSGD:
    """Plain gradient descent, p <- p - lr * g, for one parameter array."""

    def __init__(self, lr=0.01):
        self.lr = lr

    def step(self, p, g):
        return p - self.lr * g


class TextbookMomentum:
    """Momentum in the original report's form, an exponential average of the gradients:
    m <- beta m + (1 - beta) g;  p <- p - lr m."""

    def __init__(self, lr=0.01, beta=0.9):
        self.lr, self.beta, self.m = lr, beta, None

    def step(self, p, g):
        self.m = (1 - self.beta) * g if self.m is None else self.beta * self.m + (1 - self.beta) * g
        return p - self.lr * self.m


class TextbookHeavyBall:
    """Classical (Polyak heavy-ball) momentum: v <- beta v + g;  p <- p - lr v."""

    def __init__(self, lr=0.01, beta=0.9):
        self.lr, self.beta, self.v = lr, beta, None

    def step(self, p, g):
        self.v = g if self.v is None else self.beta * self.v + g
        return p - self.lr * self.v


# -- the NCHW im2col and its adjoint, written the plain way: references for the NHWC kernels -------------

from cnnx.nn import functional as F  # noqa: E402
from cnnx.nn.functional import conv_output_size  # noqa: E402


def pad2d(xp, x, padding: int):
    """Zero-pad the two spatial axes of an NCHW array by ``padding`` on every side."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    out[:, :, padding : padding + h, padding : padding + w] = x
    return out


def im2col(xp, x, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """Unfold the kh x kw windows of an NCHW array into columns: (N, C*kh*kw, OH*OW).

    Row ``c*kh*kw + i*kw + j`` of a sample's column matrix holds channel c shifted by kernel offset
    (i, j), which is the order of a weight array of shape (F, C, kh, kw) flattened to (F, C*kh*kw).
    """
    n, c, h, w = x.shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    x = pad2d(xp, x, padding)
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return cols.reshape(n, c * kh * kw, oh * ow)


def col2im(xp, cols, x_shape, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The adjoint of :func:`im2col`: fold columns (N, C*kh*kw, OH*OW) back, summing overlaps."""
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    dx = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += cols[:, :, i, j]
    if padding == 0:
        return dx
    return dx[:, :, padding : padding + h, padding : padding + w]


# -- the NHWC unfolding kernels as whole functions: the layers fill buffers in blocks instead -----------


def im2col_nhwc(xp, x, kh: int, kw: int, stride: int = 1, out=None):
    """Unfold the windows of an (already padded) NHWC array into rows: (N*OH*OW, kh*kw*C).

    Row ``(n*OH + oh)*OW + ow`` holds the window at (oh, ow) in (i, j, c) order, the order of a weight
    (F, kh, kw, C) flattened to (F, kh*kw*C). Written into ``out`` (shape (N, OH, OW, kh, kw, C)) when
    given (see :func:`cnnx.nn.functional.fill_windows`): no intermediate array.
    """
    n, h, w, c = x.shape
    oh = conv_output_size(h, kh, stride, 0)
    ow = conv_output_size(w, kw, stride, 0)
    if out is None:
        out = xp.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    return F.fill_windows(xp, x, kh, kw, stride, out).reshape(n * oh * ow, kh * kw * c)


def im2col_taps(xp, x, kh: int, kw: int, stride: int = 1, out=None):
    """Unfold a single-channel (already padded) NHWC array tap by tap: (kh*kw, N*OH*OW).

    Row ``i*kw + j`` is the image shifted by kernel offset (i, j): the transpose of :func:`im2col_nhwc`'s
    result when C == 1 (see :func:`cnnx.nn.functional.fill_taps`; into ``out``, shape (kh, kw, N, OH,
    OW), when given).
    """
    n, h, w, c = x.shape
    oh = conv_output_size(h, kh, stride, 0)
    ow = conv_output_size(w, kw, stride, 0)
    if out is None:
        out = xp.empty((kh, kw, n, oh, ow), dtype=x.dtype)
    return F.fill_taps(xp, x, kh, kw, stride, out).reshape(kh * kw, n * oh * ow)


def col2im_nhwc(xp, planes, x_shape, kh: int, kw: int, stride: int = 1):
    """The adjoint of :func:`im2col_nhwc`, from the columns grouped by kernel offset.

    ``planes`` is (kh*kw, N*OH*OW, C): plane ``i*kw + j`` holds what the (i, j) tap of every window sends
    back to its input pixel (one batched product ``dy @ kernel_planes(W)`` makes them); they are folded
    into a new NHWC array of ``x_shape`` by :func:`cnnx.nn.functional.fold_planes`.
    """
    n, h, w, c = x_shape
    oh = conv_output_size(h, kh, stride, 0)
    ow = conv_output_size(w, kw, stride, 0)
    dx = xp.zeros((n, h, w, c), dtype=planes.dtype)
    return F.fold_planes(xp, planes.reshape(kh, kw, n, oh, ow, c), dx, stride)

"""Pure array kernels shared by the layers and the loss, written once against an array module ``xp``.

Every function takes ``xp`` (NumPy or CuPy) as its first argument and never leaves the device. The
window helpers loop over the kernel offsets (kh x kw strided slices, each a large vectorised copy)
instead of scattering, so they need no ``add.at`` and give the same, deterministic result on both
libraries.
"""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


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


def pool_windows(xp, x, k: int, stride: int):
    """Stack the k x k windows of an NCHW array along a new first axis: (k*k, N, C, OH, OW)."""
    n, c, h, w = x.shape
    oh = conv_output_size(h, k, stride, 0)
    ow = conv_output_size(w, k, stride, 0)
    windows = xp.empty((k * k, n, c, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            windows[i * k + j] = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return windows


def unpool_argmax(xp, dy, argmax, x_shape, k: int, stride: int):
    """Route each window's gradient ``dy`` to the input position ``argmax`` picked (0 .. k*k-1)."""
    n, c, oh, ow = dy.shape
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    zero = xp.zeros((), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            routed = xp.where(argmax == i * k + j, dy, zero)
            dx[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += routed
    return dx


def log_softmax(xp, z, axis: int = -1):
    """log(softmax(z)) computed through the log-sum-exp shift, finite for any finite z."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(xp, z, axis: int = -1):
    """Class probabilities from logits; rows sum to one."""
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)

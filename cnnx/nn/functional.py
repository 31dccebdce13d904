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


# -- NHWC kernels: the layers' internal layout --------------------------------------------------------
#
# The layers keep their activations in NHWC memory (channels last) and hand them on as NCHW-shaped
# transposed views, so the layer boundary stays NCHW. Channels last makes each im2col row a run of
# kw*C contiguous numbers, makes the convolution one (N*OH*OW, K) x (K, F) matrix product whose result
# is already NHWC, and makes the two rows of a 2x2 pooling window whole contiguous image rows.


def to_nhwc(x):
    """The NHWC view of an NCHW-shaped array (no copy): contiguous when its memory is channels last."""
    return x.transpose(0, 2, 3, 1)


def to_nchw(x):
    """The NCHW view of an NHWC array (no copy): what a layer hands on."""
    return x.transpose(0, 3, 1, 2)


def pad_nhwc(xp, x, padding):
    """Zero-pad the two spatial axes of an NHWC array by ``padding`` on every side, or by (rows,
    columns) for a pair (a new array; the array itself when there is nothing to pad)."""
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    if ph == pw == 0:
        return x
    n, h, w, c = x.shape
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    out[:, ph : ph + h, pw : pw + w] = x
    return out


def fill_windows(xp, x, kh: int, kw: int, stride: int, out):
    """Write the windows of an (already padded) NHWC array into ``out`` (N, OH, OW, kh, kw, C): the
    window at (oh, ow) in (i, j, c) order, read through a strided view and written in one copy."""
    windows = xp.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H', W', C, kh, kw)
    out[...] = windows[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3)
    return out


def fill_taps(xp, x, kh: int, kw: int, stride: int, out):
    """Write a single-channel (already padded) NHWC array into ``out`` (kh, kw, N, OH, OW) tap by tap:
    ``out[i, j]`` is the image shifted by kernel offset (i, j), one strided copy of whole image rows."""
    n, h, w, c = x.shape
    if c != 1:
        raise ValueError(f"fill_taps unfolds single-channel images, got {c} channels")
    oh, ow = out.shape[3], out.shape[4]
    image = x.reshape(n, h, w)
    for i in range(kh):
        for j in range(kw):
            out[i, j] = image[:, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return out


def kernel_planes(w):
    """A weight (F, C, kh, kw) as one (F, C) matrix per kernel offset: (kh*kw, F, C), a view."""
    f, c, kh, kw = w.shape
    return w.transpose(2, 3, 0, 1).reshape(kh * kw, f, c)


def fold_planes(xp, planes, out, stride: int = 1):
    """Add what each tap sends back into the NHWC gradient ``out`` (N, H', W', C), zeroed by the caller.

    ``planes`` is (kh, kw, N, OH, OW, C): plane (i, j) is contiguous, so folding it back is one
    strided-slice addition of whole image rows; the kh*kw additions sum the overlaps without a scatter.
    """
    kh, kw, _, oh, ow, _ = planes.shape
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + stride * oh : stride, j : j + stride * ow : stride] += planes[i, j]
    return out


def fold_tap_products(xp, dy, kernels, out, kh: int, kw: int, stride: int = 1):
    """Add the input gradient of a convolution into the NHWC ``out`` (N, H', W', C), zeroed by the caller.

    ``dy`` is (N*OH*OW, F) for the N images of ``out`` and ``kernels`` the (kh*kw, F, C) planes of
    :func:`kernel_planes`. For each kernel offset (i, j), ``dy @ kernels[i*kw + j]`` is what that tap of
    every window sends back, (N, OH, OW, C): it is added to the input pixels under the tap at once,
    while it is still in cache, as one strided-slice addition of whole image rows. The same sums, in
    the same order, as folding the planes of the batched product ``dy @ kernels`` (:func:`fold_planes`).
    """
    n, h, w, c = out.shape
    oh = conv_output_size(h, kh, stride, 0)
    ow = conv_output_size(w, kw, stride, 0)
    plane = xp.empty((n * oh * ow, c), dtype=out.dtype)
    for i in range(kh):
        for j in range(kw):
            xp.matmul(dy, kernels[i * kw + j], out=plane)
            out[:, i : i + stride * oh : stride, j : j + stride * ow : stride] += plane.reshape(n, oh, ow, c)
    return out


def bias_add_rows(xp, y, b, rows_per_image: int):
    """In place, add ``b`` (F,) to every row of ``y`` (N*Q, F); Q = ``rows_per_image``.

    ``y += b`` would loop over N*Q short rows of F numbers; adding ``b`` tiled Q times to each image's
    (Q*F,) row is the same sum in N long, vectorised rows.
    """
    f = b.shape[0]
    rows = y.reshape(-1, rows_per_image * f)
    rows += xp.tile(b, rows_per_image)
    return y


def bias_grad_rows(dy, rows_per_image: int):
    """The column sums of dy (N*Q, F), computed as N long rows first (see :func:`bias_add_rows`)."""
    f = dy.shape[1]
    return dy.reshape(-1, rows_per_image * f).sum(axis=0).reshape(rows_per_image, f).sum(axis=0)


def maxpool2x2_nhwc(xp, x, masks: bool = True, out=None):
    """2x2 max pooling with stride 2 of an NHWC array (floor mode): (y, right, down) for the backward.

    The two columns of each window are compared first, then the two row maxima, so ties go to the first
    maximum in row-major order (the left column within a row, then the top row), as in the general
    path. ``right`` (N, 2*OH, OW, C) says the right column won within a row, ``down`` (N, OH, OW, C)
    that the bottom row won. The columns are compared as strided views (in channels-last memory each
    is a run of C contiguous numbers), without copying them out first. Without ``masks`` (inference)
    the masks are (None, None). ``out`` is a (y, right, down) triple to write into (see
    :func:`maxpool2x2_outputs`), new arrays when None.
    """
    y, right, down = out if out is not None else maxpool2x2_outputs(xp, x.shape, x.dtype, masks)
    oh, ow = y.shape[1], y.shape[2]
    left, right_values = x[:, : 2 * oh, 0 : 2 * ow : 2], x[:, : 2 * oh, 1 : 2 * ow : 2]  # (N, 2*OH, OW, C)
    if right is not None:
        xp.greater(right_values, left, out=right)
    rows = xp.maximum(left, right_values)  # the maximum of each row pair
    top, bottom = rows[:, 0::2], rows[:, 1::2]  # whole image rows: cheap views
    if down is not None:
        xp.greater(bottom, top, out=down)
    xp.maximum(top, bottom, out=y)
    return y, right, down


def maxpool2x2_outputs(xp, x_shape, dtype, masks: bool = True):
    """New (y, right, down) arrays for :func:`maxpool2x2_nhwc` of an NHWC input of ``x_shape``."""
    n, h, w, c = x_shape
    oh, ow = h // 2, w // 2
    y = xp.empty((n, oh, ow, c), dtype=dtype)
    if not masks:
        return y, None, None
    return y, xp.empty((n, 2 * oh, ow, c), dtype=bool), xp.empty((n, oh, ow, c), dtype=bool)


def maxpool2x2_nhwc_backward(xp, dy, right, down, x_shape, out=None):
    """Route dy (N, OH, OW, C) to the inputs :func:`maxpool2x2_nhwc` picked: dx of NHWC ``x_shape``
    (written into ``out`` when given; it needs zeros only where a partial window was dropped).

    Where a mask is set, the winner gets ``dy * mask`` and the loser ``dy - dy * mask``: for finite
    numbers that is exactly dy and 0 (or 0 and dy), one pass each, with no negated mask to build.
    """
    n, h, w, c = x_shape
    oh, ow = dy.shape[1], dy.shape[2]
    drows = xp.empty((n, 2 * oh, ow, c), dtype=dy.dtype)  # the gradient of each row maximum
    bottom, top = drows[:, 1::2], drows[:, 0::2]
    xp.multiply(dy, down, out=bottom)
    xp.subtract(dy, bottom, out=top)
    if out is None:
        edge = h != 2 * oh or w != 2 * ow  # a dropped partial window gets zeros
        out = xp.zeros(x_shape, dtype=dy.dtype) if edge else xp.empty(x_shape, dtype=dy.dtype)
    right_grad, left_grad = out[:, : 2 * oh, 1 : 2 * ow : 2], out[:, : 2 * oh, 0 : 2 * ow : 2]
    xp.multiply(drows, right, out=right_grad)
    xp.subtract(drows, right_grad, out=left_grad)
    return out


def log_softmax(xp, z, axis: int = -1):
    """log(softmax(z)) computed through the log-sum-exp shift, finite for any finite z."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(xp, z, axis: int = -1):
    """Class probabilities from logits; rows sum to one."""
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)

"""The channels-last fast paths against the general ones: the 2x2 pooling shortcut, the NHWC im2col/col2im
pair, the long-row bias helpers, and the memory layout the layers hand on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnnx import functional as F
from cnnx.layers import Conv2D, MaxPool2D, ReLU
from cnnx.nn import build_model

import reference as ref
from helpers import assert_close


def general_pool(backend, x, dy):
    """MaxPool2D(2, 2) through the general window path (pool_windows / argmax / unpool_argmax)."""
    xp = backend.xp
    windows = F.pool_windows(xp, x, 2, 2)
    y = windows.max(axis=0)
    return y, F.unpool_argmax(xp, dy, windows.argmax(axis=0), x.shape, 2, 2)


@pytest.mark.parametrize("size", [(6, 6), (7, 5), (5, 8), (2, 3), (26, 26)])
def test_fast_2x2_pooling_matches_the_general_window_path(backend, dtype, rng, size):
    # Values on a coarse grid so that ties are frequent, as after a ReLU.
    x = np.round(rng.standard_normal((3, 4, *size)) * 2) / 2
    layer = MaxPool2D(2, backend=backend, dtype=dtype)
    x_dev = backend.to_device(x, dtype)
    y, saved = layer.forward(x_dev)
    dy = backend.to_device(rng.standard_normal(y.shape), dtype)
    dx, _ = layer.backward(saved, dy)
    ref_y, ref_dx = general_pool(backend, x_dev, dy)
    assert np.array_equal(backend.to_host(y), backend.to_host(ref_y)), "pooled values differ"
    assert np.array_equal(backend.to_host(dx), backend.to_host(ref_dx)), "routed gradients differ"


@pytest.mark.parametrize("maxima", [m for r in range(1, 5) for m in itertools.combinations(range(4), r)])
def test_fast_2x2_pooling_sends_a_tie_to_the_first_maximum_in_row_major_order(backend, maxima):
    window = np.zeros(4)
    window[list(maxima)] = 1.0
    layer = MaxPool2D(2, backend=backend)
    _, saved = layer.forward(backend.to_device(window.reshape(1, 1, 2, 2), layer.dtype))
    dx = backend.to_host(layer.backward(saved, backend.to_device(np.ones((1, 1, 1, 1)), layer.dtype))[0])
    expected = np.zeros(4)
    expected[maxima[0]] = 1.0
    assert dx.reshape(4).tolist() == expected.tolist(), (
        f"maxima at {maxima}: gradient went to {dx.reshape(4)}"
    )


def test_fast_2x2_pooling_gives_a_dropped_edge_zero_gradient(backend):
    layer = MaxPool2D(2, backend=backend)
    x = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)  # the last row and column are never pooled
    y, saved = layer.forward(backend.to_device(x, layer.dtype))
    dx = backend.to_host(layer.backward(saved, backend.to_device(np.ones(y.shape), layer.dtype))[0])
    edge = np.abs(dx[0, 0, 4, :]).sum() + np.abs(dx[0, 0, :, 6]).sum()
    assert edge == 0, f"the dropped edge received gradient {edge}"
    assert dx.sum() == y.size, f"{dx.sum()} units of gradient routed for {y.size} windows"


@pytest.mark.parametrize("stride", [1, 2])
def test_nhwc_im2col_and_col2im_are_adjoint(backend, rng, stride):
    # <im2col(x), c> == <x, col2im(c)>: col2im folds back exactly what im2col unfolded.
    xp = backend.xp
    x = rng.standard_normal((2, 7, 6, 3))
    cols = ref.im2col_nhwc(xp, backend.to_device(x, "float64"), 3, 2, stride)  # (P, kh*kw*C)
    c = rng.standard_normal(cols.shape)
    planes = c.reshape(c.shape[0], 3 * 2, 3).transpose(1, 0, 2).copy()  # (kh*kw, P, C)
    back = ref.col2im_nhwc(xp, backend.to_device(planes, "float64"), x.shape, 3, 2, stride)
    lhs = float(np.sum(backend.to_host(cols) * c))
    rhs = float(np.sum(x * backend.to_host(back)))
    assert abs(lhs - rhs) < 1e-10 * max(abs(lhs), 1.0), f"<im2col x, c> = {lhs} but <x, col2im c> = {rhs}"


def test_nhwc_im2col_holds_the_nchw_columns_reordered(backend, rng):
    xp = backend.xp
    x = rng.standard_normal((2, 3, 6, 5))
    nchw = backend.to_host(ref.im2col(xp, backend.to_device(x, "float64"), 3, 3, 1, 0))  # (N, C*9, OH*OW)
    nhwc = backend.to_host(ref.im2col_nhwc(xp, backend.to_device(x.transpose(0, 2, 3, 1), "float64"), 3, 3))
    reordered = nchw.reshape(2, 3, 3, 3, 12).transpose(0, 4, 2, 3, 1).reshape(24, 27)
    assert np.array_equal(nhwc, reordered), "NHWC columns are not the NCHW ones in (i, j, c) order"


@pytest.mark.parametrize("stride", [1, 2])
def test_tap_by_tap_columns_are_the_window_columns_transposed(backend, rng, stride):
    xp = backend.xp
    x = backend.to_device(rng.standard_normal((2, 7, 6, 1)), "float64")
    taps = backend.to_host(ref.im2col_taps(xp, x, 3, 2, stride))
    windows = backend.to_host(ref.im2col_nhwc(xp, x, 3, 2, stride))
    assert np.array_equal(taps, windows.T), "im2col_taps is not im2col_nhwc transposed for one channel"


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (1, 2)])
def test_single_channel_conv2d_matches_naive_loops(backend, rng, stride, padding):
    # One input channel takes the tap-by-tap path (the first layer of the seed CNN).
    layer = Conv2D(1, 4, 3, stride, padding, rng=rng, backend=backend, dtype="float64")
    layer.params["b"][...] = backend.to_device(rng.standard_normal(4), "float64")
    x = rng.standard_normal((2, 1, 8, 7))
    y, saved = layer.forward(backend.to_device(x, "float64"))
    w, b = backend.to_host(layer.params["W"]), backend.to_host(layer.params["b"])
    assert_close(backend.to_host(y), ref.conv2d(x, w, b, stride, padding), 1e-12, "forward")
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward(saved, backend.to_device(dy, "float64"))
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dy, stride, padding)
    assert_close(backend.to_host(dx), ref_dx, 1e-12, "dx")
    assert_close(backend.to_host(grads["W"]), ref_dw, 1e-12, "dW")
    assert_close(backend.to_host(grads["b"]), ref_db, 1e-12, "db")


def test_long_row_bias_helpers_match_the_plain_sums(backend, rng):
    xp = backend.xp
    y, b = rng.standard_normal((6 * 5, 4)), rng.standard_normal(4)
    y_dev = backend.to_device(y.copy(), "float64")  # on the CPU to_device aliases: keep y intact
    F.bias_add_rows(xp, y_dev, backend.to_device(b, "float64"), 5)
    assert_close(backend.to_host(y_dev), y + b, 1e-15, "bias_add_rows")
    sums = backend.to_host(F.bias_grad_rows(backend.to_device(y, "float64"), 5))
    assert_close(sums, y.sum(0), 1e-14, "bias_grad_rows")


@pytest.mark.parametrize("layout", ["channels first", "channels last"])
def test_conv2d_gives_the_same_result_whatever_the_input_memory_layout(backend, rng, layout):
    layer = Conv2D(3, 4, 3, padding=1, rng=rng, backend=backend, dtype="float64")
    x = rng.standard_normal((2, 3, 5, 6))
    plain = backend.to_host(layer(backend.to_device(x, "float64")))
    if layout == "channels last":
        x_dev = F.to_nchw(backend.to_device(x.transpose(0, 2, 3, 1).copy(), "float64"))
    else:
        x_dev = backend.to_device(x, "float64")
    assert_close(backend.to_host(layer(x_dev)), plain, 1e-15, f"Conv2D on {layout} input")


def test_the_seed_cnn_keeps_its_activations_channels_last_until_flatten(rng):
    # A layout regression would not change a single number, only the speed: check the memory itself.
    model = build_model("seed")
    h = rng.random((2, 1, 28, 28), dtype=np.float32)
    for layer in model.layers[:6]:
        h, _ = layer.forward(h)
        last = F.to_nhwc(h)
        assert last.flags.c_contiguous, f"{type(layer).__name__} handed on memory that is not NHWC"


def test_relu_keeps_a_dense_input_as_it_is(backend, rng):
    layer = ReLU(backend=backend, dtype="float64")
    x = rng.standard_normal((3, 5))
    y = backend.to_host(layer(backend.to_device(x, "float64")))
    assert np.array_equal(y, np.maximum(x, 0)), "ReLU on a 2-D input changed values"


@pytest.mark.parametrize("size", [(6, 6), (7, 5)])
def test_fast_2x2_pooling_gives_the_same_values_in_inference(backend, rng, size):
    layer = MaxPool2D(2, backend=backend, dtype="float64")
    x = backend.to_device(rng.standard_normal((2, 3, *size)), "float64")
    inference = backend.to_host(layer(x))
    training = backend.to_host(layer.forward(x, train=True)[0])
    assert np.array_equal(inference, training), "inference pooling differs from training pooling"

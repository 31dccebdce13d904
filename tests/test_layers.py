"""Layers: forward against naive loops, backward against finite differences, on every usable backend."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.backends import NumpyBackend
from cnnx.errors import ConfigError
from cnnx.layercheck.gradients import check_gradients
from cnnx.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

import reference as ref
from helpers import assert_close

TOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}


def distinct_values(rng, shape):
    """Values at least 0.01 apart, so max-pooling has no ties within finite-difference steps."""
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.01 - 1.0


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 0), (3, 2, 1), (1, 1, 2), (5, 1, 2), (3, 2, 0)])
def test_conv2d_matches_naive_loops(backend, dtype, rng, kernel, stride, padding):
    layer = Conv2D(3, 4, kernel, stride, padding, rng=rng, backend=backend, dtype=dtype)
    layer.params["b"][...] = backend.to_device(rng.standard_normal(4), dtype)
    x = rng.standard_normal((2, 3, 9, 8))
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    w, b = backend.to_host(layer.params["W"]), backend.to_host(layer.params["b"])
    assert_close(y, ref.conv2d(x.astype(dtype), w, b, stride, padding), TOL[dtype], "Conv2D forward")


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 0), (3, 2, 1), (1, 1, 2), (5, 1, 2), (3, 2, 0)])
def test_conv2d_backward_matches_naive_loops(backend, dtype, rng, kernel, stride, padding):
    layer = Conv2D(3, 4, kernel, stride, padding, rng=rng, backend=backend, dtype=dtype)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    y, saved = layer.forward(backend.to_device(x, dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = layer.backward(saved, backend.to_device(dy, dtype))
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, backend.to_host(layer.params["W"]), dy, stride, padding)
    assert_close(backend.to_host(dx), ref_dx, TOL[dtype], "Conv2D dx")
    assert_close(backend.to_host(grads["W"]), ref_dw, TOL[dtype], "Conv2D dW")
    assert_close(backend.to_host(grads["b"]), ref_db, TOL[dtype], "Conv2D db")


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 0), (3, 2, 1), (2, 1, 2)])
def test_conv2d_gradients_match_finite_differences(backend, rng, kernel, stride, padding):
    layer = Conv2D(2, 3, kernel, stride, padding, rng=rng, backend=backend, dtype="float64")
    errors = check_gradients(layer, rng.standard_normal((2, 2, 7, 6)), rng)
    assert max(errors.values()) < 1e-6, errors


class SmallBlocks(NumpyBackend):
    """The CPU backend with blocks of two images: small batches then take the convolution's blocked path
    (unfold a block, multiply it, unfold it again for dW), which real batches take on the CPU."""

    def cache_block(self, n, item_bytes):
        return min(n, 2)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 0), (3, 2, 1), (1, 1, 2), (5, 1, "same")])
def test_blocked_conv2d_matches_naive_loops(dtype, rng, kernel, stride, padding):
    backend = SmallBlocks(threads=2)
    layer = Conv2D(3, 4, kernel, stride, padding, rng=rng, backend=backend, dtype=dtype)
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((5, 3, 9, 8)).astype(dtype)  # blocks of 2, 2 and 1 images
    assert layer.plan(x.shape).block == 2, "the test meant the blocked path but took another"
    with backend.parallel_region():
        y, saved = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, grads = layer.backward(saved, dy)
    pad = (kernel - 1) // 2 if padding == "same" else padding
    w = layer.params["W"]
    assert_close(y, ref.conv2d(x, w, layer.params["b"], stride, pad), TOL[dtype], "blocked Conv2D forward")
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dy, stride, pad)
    assert_close(dx, ref_dx, TOL[dtype], "blocked Conv2D dx")
    assert_close(grads["W"], ref_dw, TOL[dtype], "blocked Conv2D dW")
    assert_close(grads["b"], ref_db, TOL[dtype], "blocked Conv2D db")


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, "same"), (3, 2, 1)])
def test_blocked_conv2d_gradients_match_finite_differences(rng, kernel, stride, padding):
    layer = Conv2D(2, 3, kernel, stride, padding, rng=rng, backend=SmallBlocks(), dtype="float64")
    x = rng.standard_normal((3, 2, 7, 6))
    assert layer.plan(x.shape).block == 2, "the test meant the blocked path but took another"
    errors = check_gradients(layer, x, rng)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kernel, padding", [(3, 0), (3, "same"), (5, 1), (1, 0), (5, 4), (3, 3)])
def test_a_blocked_conv2d_that_does_not_widen_gathers_its_input_gradient(dtype, rng, kernel, padding):
    # 4 -> 3 channels at stride 1: dx is the correlation of the padded dy with the flipped kernels,
    # except where the padding exceeds kernel size - 1 (3, 3): then it is folded tap by tap.
    backend = SmallBlocks(threads=2)
    layer = Conv2D(4, 3, kernel, 1, padding, rng=rng, backend=backend, dtype=dtype)
    x = rng.standard_normal((5, 4, 9, 8)).astype(dtype)
    pad = (kernel - 1) // 2 if padding == "same" else padding
    assert layer.plan(x.shape).gathers_dx == (pad <= kernel - 1)
    with backend.parallel_region():
        y, saved = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, grads = layer.backward(saved, dy)
    ref_dx, ref_dw, _ = ref.conv2d_backward(x, layer.params["W"], dy, 1, pad)
    assert dx.shape == x.shape
    assert_close(dx, ref_dx, TOL[dtype], "gathered Conv2D dx")
    assert_close(grads["W"], ref_dw, TOL[dtype], "blocked Conv2D dW")


def test_gathered_input_gradients_match_finite_differences(rng):
    layer = Conv2D(3, 2, 3, padding="same", rng=rng, backend=SmallBlocks(), dtype="float64")
    x = rng.standard_normal((3, 3, 7, 6))
    assert layer.plan(x.shape).gathers_dx, "the test meant the gathered path but took another"
    errors = check_gradients(layer, x, rng)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kernel", [(3, 5), (5, 3)], ids=["3x5", "5x3"])
def test_a_gathered_input_gradient_with_a_non_square_same_kernel_matches_finite_differences(rng, kernel):
    # "same" pads (kh - 1) / 2 rows but (kw - 1) / 2 columns: a gather that mixed up the two (or the
    # kernel's height and width) gives a square kernel's dx unchanged, and only a non-square one shows it.
    layer = Conv2D(3, 2, kernel, padding="same", rng=rng, backend=SmallBlocks(), dtype="float64")
    x = rng.standard_normal((3, 3, 6, 7))
    assert layer.plan(x.shape).gathers_dx, "the test meant the gathered path but took another"
    errors = check_gradients(layer, x, rng)
    assert max(errors.values()) < 1e-6, errors


def test_widening_strided_or_whole_batch_convolutions_fold_their_input_gradient(rng):
    shape = (5, 4, 9, 8)
    cases = {
        "widening": Conv2D(4, 6, 3, padding="same", backend=SmallBlocks(), dtype="float64"),
        "strided": Conv2D(4, 3, 3, stride=2, padding=1, backend=SmallBlocks(), dtype="float64"),
        "one block (a GPU's)": Conv2D(4, 3, 3, padding="same", backend=NumpyBackend(), dtype="float64"),
    }
    gathering = [name for name, layer in cases.items() if layer.plan(shape).gathers_dx]
    assert not gathering, f"{gathering} gather dx"


def test_the_cpu_backend_blocks_about_two_mib_of_windows_and_other_backends_take_the_batch():
    from cnnx.backends import Backend

    window = 784 * 288 * 4  # one 28x28 image unfolded for a 3x3 convolution of 32 channels: 903 KiB
    assert NumpyBackend().cache_block(128, window) == 2
    assert NumpyBackend().cache_block(128, 10**9) == 1  # at least one image
    assert NumpyBackend().cache_block(3, 1) == 3  # never more than the batch
    assert Backend().cache_block(128, window) == 128  # a GPU: one kernel over the whole batch


def test_conv2d_output_shape_follows_the_floor_formula():
    layer = Conv2D(1, 2, 3, stride=2, padding=1)
    assert layer.output_shape((1, 28, 28)) == (2, 14, 14)
    assert layer(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 2, 14, 14)


def test_conv2d_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ConfigError, match="does not fit"):
        Conv2D(1, 2, 5).output_shape((1, 3, 3))


@pytest.mark.parametrize(
    "kernel, stride, size", [(2, 2, (6, 6)), (2, 2, (7, 5)), (3, 2, (7, 7)), (3, 1, (5, 6))]
)
def test_maxpool2d_matches_naive_loops(backend, dtype, rng, kernel, stride, size):
    layer = MaxPool2D(kernel, stride, backend=backend, dtype=dtype)
    x = rng.standard_normal((2, 3, *size)).astype(dtype)
    y, saved = layer.forward(backend.to_device(x, dtype))
    ref_y, _ = ref.maxpool2d(x, kernel, stride)
    assert_close(backend.to_host(y), ref_y, TOL[dtype], "MaxPool2D forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = backend.to_host(layer.backward(saved, backend.to_device(dy, dtype))[0])
    assert_close(dx, ref.maxpool2d_backward(x, kernel, stride, dy), TOL[dtype], "MaxPool2D backward")


def test_maxpool2d_sends_the_gradient_of_a_tie_to_the_first_maximum(backend):
    layer = MaxPool2D(2, backend=backend)
    _, saved = layer.forward(backend.to_device(np.ones((1, 1, 2, 2)), layer.dtype))
    dx = backend.to_host(layer.backward(saved, backend.to_device(np.full((1, 1, 1, 1), 5.0), layer.dtype))[0])
    assert dx[0, 0].tolist() == [[5.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2)])
def test_maxpool2d_gradients_match_finite_differences(backend, rng, kernel, stride):
    layer = MaxPool2D(kernel, stride, backend=backend, dtype="float64")
    errors = check_gradients(layer, distinct_values(rng, (2, 2, 7, 7)), rng)
    assert errors["x"] < 1e-6, errors


def test_maxpool2d_drops_a_partial_window_at_the_edge():
    assert MaxPool2D(2).output_shape((64, 11, 11)) == (64, 5, 5)


def test_dense_matches_per_sample_loops(backend, dtype, rng):
    layer = Dense(5, 3, rng=rng, backend=backend, dtype=dtype)
    layer.params["b"][...] = backend.to_device(rng.standard_normal(3), dtype)
    x = rng.standard_normal((4, 5)).astype(dtype)
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    expected = ref.dense(x, backend.to_host(layer.params["W"]), backend.to_host(layer.params["b"]))
    assert_close(y, expected, TOL[dtype], "Dense forward")


def test_dense_gradients_match_finite_differences(backend, rng):
    layer = Dense(6, 4, rng=rng, backend=backend, dtype="float64")
    layer.params["b"][...] = backend.to_device(rng.standard_normal(4), "float64")
    errors = check_gradients(layer, rng.standard_normal((3, 6)), rng)
    assert max(errors.values()) < 1e-6, errors


def test_flatten_backward_puts_each_gradient_back_where_its_input_was(backend, rng):
    layer = Flatten(backend=backend, dtype="float64")
    x = rng.standard_normal((2, 3, 4, 5))
    y, saved = layer.forward(backend.to_device(x, "float64"))
    assert np.array_equal(backend.to_host(y), x.reshape(2, 60)), (
        "Flatten does not keep each sample's C, H, W order"
    )
    dy = rng.standard_normal((2, 60))
    dx = backend.to_host(layer.backward(saved, backend.to_device(dy, "float64"))[0])
    assert dx.shape == x.shape and np.array_equal(dx.reshape(2, 60), dy)


def test_flatten_gradients_match_finite_differences(backend, rng):
    errors = check_gradients(
        Flatten(backend=backend, dtype="float64"), rng.standard_normal((2, 3, 2, 2)), rng
    )
    assert errors["x"] < 1e-6, errors


def test_relu_gradients_match_finite_differences(backend, rng):
    x = rng.standard_normal((3, 4)) + np.sign(rng.standard_normal((3, 4))) * 0.1  # no value near the kink
    errors = check_gradients(ReLU(backend=backend, dtype="float64"), x, rng)
    assert errors["x"] < 1e-6, errors


def test_relu_derivative_is_zero_at_zero_as_in_the_report(backend):
    layer = ReLU(backend=backend)
    _, saved = layer.forward(backend.to_device(np.array([-1.0, 0.0, 2.0]), layer.dtype))
    dx = backend.to_host(layer.backward(saved, backend.to_device(np.ones(3), layer.dtype))[0])
    assert dx.tolist() == [0.0, 0.0, 1.0]


def test_flatten_round_trips_shapes(backend, rng):
    layer = Flatten(backend=backend)
    x = backend.to_device(rng.standard_normal((2, 3, 4, 5)), layer.dtype)
    y, saved = layer.forward(x)
    assert y.shape == (2, 60)
    assert layer.backward(saved, y)[0].shape == (2, 3, 4, 5)


def test_layers_default_to_the_cpu_backend_in_float32():
    layer = Dense(2, 2)
    assert layer.backend.name == "cpu"
    assert layer.params["W"].dtype == np.float32 and layer.params["b"].dtype == np.float32


@pytest.mark.parametrize(
    "layer",
    [Conv2D(2, 3, 3), MaxPool2D(2), Dense(4, 2), ReLU(), Flatten()],
    ids=lambda layer: type(layer).__name__,
)
def test_every_layer_gives_gradients_with_the_keys_shapes_and_dtypes_of_its_params(layer, rng):
    x = rng.standard_normal({"Dense": (2, 4)}.get(type(layer).__name__, (2, 2, 6, 6))).astype(np.float32)
    y, saved = layer.forward(x)
    dx, grads = layer.backward(saved, np.ones_like(y))
    assert dx.shape == x.shape
    assert set(grads) == set(layer.params)
    for key in layer.params:
        assert grads[key].shape == layer.params[key].shape
        assert grads[key].dtype == layer.params[key].dtype


def test_im2col_and_col2im_are_adjoint(backend, rng):
    # <im2col(x), c> == <x, col2im(c)> for any x and c: col2im is exactly the transpose of im2col.
    xp = backend.xp
    x = rng.standard_normal((2, 3, 7, 6))
    cols = ref.im2col(xp, backend.to_device(x, "float64"), 3, 3, 2, 1)
    c = rng.standard_normal(cols.shape)
    back = ref.col2im(xp, backend.to_device(c, "float64"), x.shape, 3, 3, 2, 1)
    lhs = float(np.sum(backend.to_host(cols) * c))
    rhs = float(np.sum(x * backend.to_host(back)))
    assert abs(lhs - rhs) < 1e-10 * max(abs(lhs), 1.0)


def test_the_example_layer_of_architecture_md_follows_the_contract_and_its_gradients_check(rng):
    from pathlib import Path

    from cnnx.layers import Layer
    from cnnx.nn.registry import Size, register_layer, unregister_layer

    text = (Path(__file__).parents[1] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    (example,) = [block for block in blocks if "class Scale(Layer)" in block]
    namespace = {"Layer": Layer, "Size": Size, "register_layer": register_layer}
    exec(example, namespace)  # registers "Scale"
    try:
        layer = namespace["Scale"](5, dtype="float64")
        layer.params["s"][...] = rng.standard_normal(5)
        errors = check_gradients(layer, rng.standard_normal((3, 5)), rng)
        assert layer(np.ones((2, 5))).shape == (2, 5)
    finally:
        unregister_layer("Scale")
    assert max(errors.values()) < 1e-6, errors

"""The report's future lines, first part: Dropout, BatchNorm1D/2D, AvgPool2D, GlobalAvgPool2D, Conv2D with
padding "same", and the presets built from them. Each layer against a plain reference, float64 gradient
checks under 1e-6, float32 against float64, and its state through files."""

from __future__ import annotations

import numpy as np
import pytest

import cnnx
from cnnx.errors import CheckpointError, ConfigError
from cnnx.layercheck.gradients import check_gradients
from cnnx.layers import GRU, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dropout, GlobalAvgPool2D
from cnnx.nn import build_model
from cnnx.nn.presets import PRESETS
from cnnx.optim import make_optimizer
from cnnx.training import train_step

import reference as ref
from helpers import assert_close

GRAD_TOL = 1e-6


# -- Dropout ----------------------------------------------------------------------------------------------


def test_dropout_is_the_identity_in_evaluation(backend, rng):
    layer = Dropout(0.5, backend=backend)
    x = backend.to_device(rng.standard_normal((4, 3, 5, 5)), "float32")
    assert layer(x) is x


def test_dropout_zeroes_about_p_and_scales_the_rest_so_the_mean_is_kept(backend, rng):
    layer = Dropout(0.3, backend=backend, dtype="float64")
    x = np.ones((64, 8, 10, 10))
    y = backend.to_host(layer.forward(backend.to_device(x, "float64"), train=True)[0])
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.02, dropped
    assert np.allclose(y[y != 0], 1 / 0.7, rtol=1e-12)


def test_dropout_backward_uses_the_forward_mask(backend, rng):
    layer = Dropout(0.5, backend=backend, dtype="float64")
    x = rng.standard_normal((6, 20))
    y, saved = layer.forward(backend.to_device(x, "float64"))
    y = backend.to_host(y)
    dx = backend.to_host(layer.backward(saved, backend.to_device(np.ones((6, 20)), "float64"))[0])
    assert np.array_equal(dx == 0, y == 0) and np.allclose(dx[dx != 0], 2.0)


@pytest.mark.parametrize("shape", [(5, 12), (3, 4, 6, 5)])
def test_dropout_gradients_match_finite_differences(backend, rng, shape):
    layer = Dropout(0.4, backend=backend, dtype="float64")
    # check_gradients rewinds the layer's streams before each forward: every evaluation drops the same.
    errors = check_gradients(layer, rng.standard_normal(shape), rng)
    assert max(errors.values()) < GRAD_TOL, errors


def test_dropout_draws_from_its_seeded_stream_the_same_mask_on_every_backend(backend):
    masks = []
    for _ in range(2):
        model = cnnx.nn.Sequential([Dropout(0.5, backend=backend)], input_shape=(10,))
        model.seed_streams(7)
        x = backend.to_device(np.ones((3, 10)), "float32")
        masks.append(backend.to_host(model.forward(x)[0]))
    assert np.array_equal(*masks), "the same seed drew different masks"


def test_dropout_draws_its_mask_from_its_own_stream_as_uniform_float32_at_least_p(backend):
    # A stream state no fixed seed of a layer's own would give (not 0): a layer that drew from a fresh
    # default_rng(0), or from any generator but its stream, draws another mask.
    layer = Dropout(0.5, backend=backend)
    layer.rng.bit_generator.state = np.random.default_rng(2024).bit_generator.state
    expected = (np.random.default_rng(2024).random((3, 10), dtype=np.float32) >= 0.5) * 2.0
    y = backend.to_host(layer.forward(backend.to_device(np.ones((3, 10)), "float32"))[0])
    assert np.array_equal(y, expected), f"{int(np.sum(y != expected))} of 30 values differ from the stream's"


def test_two_training_forwards_of_one_dropout_layer_draw_different_masks(backend):
    layer = Dropout(0.5, backend=backend)
    x = backend.to_device(np.ones((4, 50)), "float32")
    first, second = (backend.to_host(layer.forward(x)[0]) for _ in range(2))
    assert not np.array_equal(first, second), "the second training step dropped the same 200 values"


def test_another_seed_draws_another_dropout_mask(backend):
    masks = []
    for seed in (7, 8):
        model = cnnx.nn.Sequential([Dropout(0.5, backend=backend)], input_shape=(50,))
        model.seed_streams(seed)
        masks.append(backend.to_host(model.forward(backend.to_device(np.ones((4, 50)), "float32"))[0]))
    assert not np.array_equal(*masks), "seeds 7 and 8 drew the same mask"


def test_two_dropout_layers_of_a_model_draw_different_masks():
    model = build_model("seed-dropout", seed=0)
    a, b = (layer for layer in model.layers if isinstance(layer, Dropout))
    assert a.rng.random() != b.rng.random()


def test_dropout_keeps_channels_last_memory(rng):
    conv = Conv2D(1, 4, 3, rng=0)
    y, _ = Dropout(0.5).forward(conv.forward(rng.random((2, 1, 8, 8), dtype=np.float32))[0])
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("p", [1.0, -0.1, "0.5", True])
def test_dropout_p_must_lie_in_zero_to_one(p):
    with pytest.raises(ConfigError, match=r"Dropout p must be a number in \[0, 1\)"):
        Dropout(p)


# -- batch normalisation ----------------------------------------------------------------------------------


def naive_batch_norm(x, gamma, beta, eps, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    shape[1] = -1
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


CASES = {"1d": (BatchNorm1D, (16, 5), (0,)), "2d": (BatchNorm2D, (4, 3, 5, 6), (0, 2, 3))}


@pytest.mark.parametrize("case", CASES)
def test_batch_norm_matches_the_formula_in_training(backend, dtype, rng, case):
    kind, shape, axes = CASES[case]
    layer = kind(shape[1], backend=backend, dtype=dtype)
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    layer.params["gamma"][...] = backend.to_device(gamma, dtype)
    layer.params["beta"][...] = backend.to_device(beta, dtype)
    x = rng.standard_normal(shape) * 3 + 1
    y = backend.to_host(layer.forward(backend.to_device(x, dtype))[0])
    expected = naive_batch_norm(x, gamma, beta, 1e-5, axes)
    assert_close(y, expected, 1e-5 if dtype == np.float32 else 1e-10, f"BatchNorm{case} forward")


@pytest.mark.parametrize("case", CASES)
def test_batch_norm_gradients_match_finite_differences(backend, rng, case):
    kind, shape, _ = CASES[case]
    layer = kind(shape[1], backend=backend, dtype="float64")
    layer.params["gamma"][...] = backend.to_device(rng.standard_normal(shape[1]), "float64")
    errors = check_gradients(layer, rng.standard_normal(shape), rng)
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize("case", CASES)
def test_batch_norm_moves_its_running_averages_and_evaluates_with_them(backend, rng, case):
    kind, shape, axes = CASES[case]
    layer = kind(shape[1], momentum=0.2, backend=backend, dtype="float64")
    x = rng.standard_normal(shape) * 2 + 3
    layer.forward(backend.to_device(x, "float64"))
    count = x.size // shape[1]
    mean = x.mean(axis=axes)
    unbiased = x.var(axis=axes) * count / (count - 1)
    running_mean = backend.to_host(layer.buffers["running_mean"])
    running_var = backend.to_host(layer.buffers["running_var"])
    assert np.allclose(running_mean, 0.2 * mean, rtol=1e-12)
    assert np.allclose(running_var, 0.8 + 0.2 * unbiased, rtol=1e-12)
    y = backend.to_host(layer(backend.to_device(x, "float64")))
    shape_c = [1] * x.ndim
    shape_c[1] = -1
    expected = (x - running_mean.reshape(shape_c)) / np.sqrt(running_var.reshape(shape_c) + 1e-5)
    assert np.allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize(("layer", "shape"), [(BatchNorm1D(3), (1, 3)), (BatchNorm2D(3), (1, 3, 1, 1))])
def test_a_training_batch_with_one_value_per_feature_is_one_line_not_a_nan(layer, shape):
    with pytest.raises(ConfigError, match="one value per feature .* use a batch size of 2 or more"):
        layer.forward(np.ones(shape, np.float32))
    assert np.all(np.isfinite(layer(np.ones(shape, np.float32))))


def test_batch_norm_buffers_go_through_model_files(tmp_path, rng):
    model = build_model("cnn-bn", seed=0)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    model.forward(x)  # training: the running averages move
    loaded = cnnx.load_model(model.save(tmp_path / "bn.npz"))
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        assert np.array_equal(a, b), name
    assert np.array_equal(model.predict_proba(x), loaded.predict_proba(x))


# -- average pooling --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "size"), [(2, None, (6, 6)), (3, 2, (7, 8)), (2, 1, (5, 5))])
def test_avg_pool_matches_naive_loops(backend, dtype, rng, kernel, stride, size):
    layer = AvgPool2D(kernel, stride, backend=backend, dtype=dtype)
    x = rng.standard_normal((2, 3, *size))
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    s = stride or kernel
    oh, ow = (size[0] - kernel) // s + 1, (size[1] - kernel) // s + 1
    expected = np.array([[[[x[n, c, i * s : i * s + kernel, j * s : j * s + kernel].mean() for j in range(ow)]
                           for i in range(oh)] for c in range(3)] for n in range(2)])  # fmt: skip
    assert_close(y, expected, 1e-6 if dtype == np.float32 else 1e-12, "AvgPool2D")


@pytest.mark.parametrize(("kernel", "stride"), [(2, None), (3, 2), (2, 1)])
def test_avg_pool_gradients_match_finite_differences(backend, rng, kernel, stride):
    layer = AvgPool2D(kernel, stride, backend=backend, dtype="float64")
    errors = check_gradients(layer, rng.standard_normal((2, 2, 7, 6)), rng)
    assert max(errors.values()) < GRAD_TOL, errors


def test_global_avg_pool_is_the_channel_mean_and_its_gradient_checks(backend, rng):
    layer = GlobalAvgPool2D(backend=backend, dtype="float64")
    x = rng.standard_normal((3, 4, 5, 6))
    y = backend.to_host(layer(backend.to_device(x, "float64")))
    assert_close(y, x.mean(axis=(2, 3)), 1e-12, "GlobalAvgPool2D")
    errors = check_gradients(layer, x, rng)
    assert max(errors.values()) < GRAD_TOL, errors
    assert layer.output_shape((4, 5, 6)) == (4,)


# -- padding "same" ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [3, (3, 5), 1])
def test_same_padding_keeps_the_size_and_matches_explicit_padding(backend, dtype, rng, kernel):
    layer = Conv2D(2, 3, kernel, padding="same", rng=0, backend=backend, dtype=dtype)
    x = rng.standard_normal((2, 2, 7, 9))
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    assert y.shape == (2, 3, 7, 9) and layer.output_shape((2, 7, 9)) == (3, 7, 9)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padded = np.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2))
    w, b = backend.to_host(layer.params["W"]).astype(np.float64), backend.to_host(layer.params["b"])
    expected = ref.conv2d(padded, w, b.astype(np.float64), 1, 0)
    assert_close(y, expected, 1e-5 if dtype == np.float32 else 1e-12, "same-padded Conv2D")


def test_same_padding_gradients_match_finite_differences(backend, rng):
    layer = Conv2D(2, 3, (3, 5), padding="same", rng=0, backend=backend, dtype="float64")
    errors = check_gradients(layer, rng.standard_normal((2, 2, 6, 7)), rng)
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize(("kernel", "stride"), [(2, 1), (3, 2), ((3, 4), 1)])
def test_same_padding_needs_stride_one_and_odd_kernels(kernel, stride):
    with pytest.raises(ConfigError, match="padding 'same' needs stride 1 and odd kernel sizes"):
        Conv2D(1, 1, kernel, stride=stride, padding="same")


def test_same_padding_goes_through_the_architecture_checks_and_back():
    layer = Conv2D(1, 2, 3, padding="same", rng=0)
    assert layer.config()["padding"] == "same"
    cnnx.nn.registry.check_architecture([layer.describe()])
    with pytest.raises(CheckpointError, match="padding must be a whole number in 0..* or one of same"):
        cnnx.nn.registry.check_architecture(
            [{"type": "Conv2D", "config": {**layer.config(), "padding": "valid"}}]
        )


# -- presets ----------------------------------------------------------------------------------------------


def preset_after_a_training_step(name, rng):
    """Preset ``name`` in float64 after one Adam step on 6 random images (its batch-norm averages have
    moved off 0 and 1, so evaluating with batch statistics instead would show), and the images."""
    model = build_model(name, dtype="float64", seed=0)
    x = rng.random((6, 1, 28, 28))
    loss, _ = train_step(model, make_optimizer("adam", model, 1e-3), x, rng.integers(0, 10, 6))
    assert np.isfinite(float(loss)), f"{name}: the training step's loss is {float(loss)}"
    return model, x


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_predicts_without_changing_a_weight_buffer_or_random_stream(name, rng):
    model, x = preset_after_a_training_step(name, rng)
    before = model.state_dict()
    model.predict_proba(x)
    after = model.state_dict()
    changed = [key for key, value in before.items() if not np.array_equal(value, after[key])]
    assert not changed, f"{name}: evaluation changed {changed}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_gives_an_image_alone_the_probabilities_of_its_row_in_a_batch(name, rng):
    # Evaluation must not depend on the other images: no batch statistics, no random masks.
    model, x = preset_after_a_training_step(name, rng)
    batch = model.predict_proba(x)
    alone = np.concatenate([model.predict_proba(x[i : i + 1]) for i in range(len(x))])
    assert_close(alone, batch, 1e-10, f"{name}: images alone and in a batch")


def test_a_residual_block_evaluates_its_shortcut_with_the_running_averages_and_leaves_them(rng):
    kw = {"backend": "cpu", "dtype": "float64"}
    body = cnnx.nn.Sequential([Conv2D(2, 3, 3, padding="same", rng=0, **kw), BatchNorm2D(3, **kw)])
    shortcut = cnnx.nn.Sequential([Conv2D(2, 3, 1, rng=1, **kw), BatchNorm2D(3, **kw)])
    block = cnnx.layers.Residual(body, shortcut)
    x = rng.standard_normal((4, 2, 5, 5)) * 2 + 1
    block.forward(x)  # training: both branches' averages move
    before = block.state_dict()
    y = block(x)
    changed = [key for key, value in before.items() if not np.array_equal(value, block.state_dict()[key])]
    assert not changed, f"evaluation changed {changed}"
    expected = body(x) + shortcut(x)
    assert_close(y, expected, 1e-12, "the block against its two branches evaluated apart")


@pytest.mark.parametrize("name", ["seed-dropout", "cnn-bn"])
def test_the_new_presets_adapt_to_other_inputs_and_classes(name):
    model = build_model(cnnx.nn.presets.preset_architecture(name, (1, 20, 20), 4), input_shape=(1, 20, 20))
    assert model.output_shape((1, 20, 20)) == (4,)


# -- GRU ----------------------------------------------------------------------------------------------------


def naive_gru(x, w_i, w_h, b_i, b_h):
    """The docstring's equations, one sample and one step at a time, in float64."""
    n, steps, _ = x.shape
    hs = w_h.shape[0]
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    out = np.zeros((n, hs))
    for s in range(n):
        h = np.zeros(hs)
        for t in range(steps):
            gi, gh = x[s, t] @ w_i + b_i, h @ w_h + b_h
            r = sigmoid(gi[:hs] + gh[:hs])
            z = sigmoid(gi[hs : 2 * hs] + gh[hs : 2 * hs])
            cand = np.tanh(gi[2 * hs :] + r * gh[2 * hs :])
            h = (1 - z) * cand + z * h
        out[s] = h
    return out


def test_gru_matches_its_equations_step_by_step(backend, dtype, rng):
    layer = GRU(5, 4, rng=0, backend=backend, dtype=dtype)
    for name in ("b_i", "b_h"):
        layer.params[name][...] = backend.to_device(rng.standard_normal(12) * 0.5, dtype)
    x = rng.standard_normal((3, 6, 5))
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    host = {k: backend.to_host(v).astype(np.float64) for k, v in layer.params.items()}
    expected = naive_gru(x, host["W_i"], host["W_h"], host["b_i"], host["b_h"])
    assert_close(y, expected, 1e-5 if dtype == np.float32 else 1e-12, "GRU")


@pytest.mark.parametrize(
    "shape", [(3, 5, 4), (2, 1, 5, 4), (2, 2, 5, 2)], ids=["sequence", "grey", "2-channel"]
)
def test_gru_gradients_match_finite_differences_through_time(backend, rng, shape):
    # Two channels of width 2: each step reads 4 numbers from two channels, so a dx put back in the
    # wrong order (rows and channels mixed up) differs, which one channel cannot show.
    layer = GRU(4, 3, rng=0, backend=backend, dtype="float64")
    for name in ("b_i", "b_h"):
        layer.params[name][...] = backend.to_device(rng.standard_normal(9) * 0.5, "float64")
    errors = check_gradients(layer, rng.standard_normal(shape), rng)
    assert max(errors.values()) < GRAD_TOL, errors


def test_gru_reads_an_image_row_by_row(rng):
    layer = GRU(2 * 5, 3, rng=0, dtype="float64")
    images = rng.standard_normal((2, 2, 4, 5))  # (N, C, rows, W): each step sees one row of both channels
    rows = images.transpose(0, 2, 1, 3).reshape(2, 4, 10)
    assert np.array_equal(layer(images), layer(rows))
    assert layer.output_shape((2, 4, 5)) == (3,)
    with pytest.raises(ConfigError, match="does not fit"):
        layer.output_shape((1, 4, 5))


def test_gru_preset_adapts_its_input_size_to_other_images():
    architecture = cnnx.nn.presets.preset_architecture("gru", (1, 8, 8), 10)
    assert architecture[0]["config"]["input_size"] == 8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_with_augmentation_resumes_to_the_weights_of_the_uninterrupted_run(name, tmp_path):
    from cnnx.data import Dataset
    from cnnx.training import RunConfig, run_training
    from cnnx.training.interrupt import TrainingInterrupted

    from helpers import StopAtStep, blobs

    data = Dataset(*blobs(48, seed=1), *blobs(16, seed=2), source="synthetic blobs")
    config = RunConfig(model=name, epochs=2, batch_size=16, augment="rotate=10,shift=2,flip,erase=0.5")
    straight = run_training(config, dataset=data, progress="none")
    with pytest.raises(TrainingInterrupted):
        run_training(config, tmp_path / "run", dataset=data, progress="none", stop=StopAtStep(4))
    resumed = run_training(config, tmp_path / "run", resume=True, dataset=data, progress="none")
    for key, value in straight.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[key]), f"{name}: {key}"

"""Sequential models: presets, whole-model gradients, summaries, device copies and the .npz format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnx.errors import CheckpointError, ConfigError
from cnnx.io import load_model, read_archive
from cnnx.layercheck.gradients import check_gradients
from cnnx.layers import Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU, Residual
from cnnx.nn import PRESETS, Sequential, build_model
from cnnx.nn.registry import MAX_PARAMETERS, REGISTRY, check_architecture
from cnnx.nn.saving import HEADER_KEY


def test_seed_preset_is_the_reports_cnn():
    model = build_model("seed")
    assert model.output_shapes()[-1] == (10,)
    assert model.output_shapes()[5] == (64, 5, 5)  # floor-mode pooling of 11x11
    assert model.parameter_count() == 234_410


def test_mlp_preset_is_the_reports_dense_network():
    assert (
        build_model("mlp").parameter_count() == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    )


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'vgg99'.*seed, mlp"):
        build_model("vgg99")


def test_seed_model_gradients_match_finite_differences(backend, rng):
    model = build_model("seed", backend=backend, dtype="float64", seed=3)
    for layer in model.layers:  # nonzero biases, so their gradients are exercised with real values
        if "b" in layer.params:
            layer.params["b"][...] = backend.to_device(
                rng.standard_normal(layer.params["b"].shape) * 0.1, "float64"
            )
    errors = check_gradients(model, rng.random((2, 1, 28, 28)), rng, max_coords=8)
    assert max(errors.values()) < 1e-6, {k: f"{v:.1e}" for k, v in errors.items()}


def test_same_seed_gives_the_same_model_and_another_seed_does_not():
    a, b, c = build_model(seed=5), build_model(seed=5), build_model(seed=6)
    for (name, pa, _), (_, pb, _), (_, pc, _) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert np.array_equal(pa, pb), name
        if name.endswith("W"):
            assert not np.array_equal(pa, pc), name


def test_summary_lists_every_layer_with_shapes_and_parameter_counts():
    text = build_model("seed").summary()
    assert "Conv2D" in text and "64x5x5" in text and "204,928" in text and "234,410 parameters" in text


def test_layers_that_do_not_fit_are_refused_when_the_model_is_built():
    with pytest.raises(ConfigError, match=r"Dense expects 10 features per sample, got shape \(1, 28, 28\)"):
        Sequential([Dense(10, 2)], input_shape=(1, 28, 28))


def test_layers_on_different_dtypes_are_refused():
    with pytest.raises(ConfigError, match="one backend and one dtype"):
        Sequential([Dense(4, 4, dtype="float64"), ReLU()], input_shape=(4,))


def test_save_then_load_gives_identical_outputs(tmp_path, backend, rng):
    model = build_model("seed", backend=backend, seed=1)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    path = model.save(tmp_path / "model.npz")
    again = load_model(path, device=backend)
    before = backend.to_host(model(backend.to_device(x)))
    after = backend.to_host(again(backend.to_device(x)))
    assert np.array_equal(before, after)


def test_to_copies_weights_across_dtypes(rng):
    model = build_model("mlp", seed=2)
    wide = model.to(dtype="float64")
    assert wide.dtype == np.float64
    assert np.array_equal(wide.state_dict()["1.W"], model.state_dict()["1.W"].astype(np.float64))


def test_predict_proba_returns_host_probabilities(rng):
    probs = build_model("mlp").predict_proba(rng.random((5, 1, 28, 28)), batch_size=2)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(str(arrays[HEADER_KEY]))
    for key, value in changes.items():
        if key == "header":
            value(header)
        elif value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: _rewrite(p, **{"param/0.W": np.zeros((2, 2), np.float32)}), "shape"),
        (lambda p: _rewrite(p, **{"param/0.W": None}), "missing"),
        (lambda p: _rewrite(p, **{"param/7.W": np.full((1600, 128), np.nan, np.float32)}), "NaN"),
        (lambda p: _rewrite(p, header=lambda h: h.update(version=99)), "version 99"),
        (
            lambda p: _rewrite(p, header=lambda h: h["architecture"][0].update(type="os.system")),
            "unknown type",
        ),
        (lambda p: np.savez(p, **{"param/0.W": np.zeros(3)}) or p, "no __cnnx__ header"),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]) and p, "unreadable or truncated"),
        (
            lambda p: np.savez(p, **{HEADER_KEY: np.array([{"x": 1}], dtype=object)}) or p,
            "Python objects",
        ),
    ],
    ids=[
        "wrong-shape",
        "missing-array",
        "nan",
        "newer-version",
        "unknown-layer",
        "no-header",
        "truncated",
        "object-array",
    ],
)
def test_a_tampered_model_file_gets_a_one_line_error(tmp_path, tamper, message):
    path = build_model("seed").save(tmp_path / "model.npz")
    tamper(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "absent.npz")


def test_saved_files_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = build_model("mlp").save(tmp_path / "model.npz")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_state_dict_arrays_are_copies_that_do_not_change_the_model():
    model = build_model("mlp", seed=4)
    before = model.state_dict()["1.W"].copy()
    model.state_dict()["1.W"][...] = 7.0
    after = model.state_dict()["1.W"]
    assert np.array_equal(after, before), f"model weight moved by {np.abs(after - before).max():.3g}"


def test_every_layer_class_of_the_package_is_registered():
    import cnnx.nn.layers as package

    classes = {
        cls.__name__ for cls in vars(package).values() if isinstance(cls, type) and cls.__name__ != "Layer"
    }
    assert classes <= set(REGISTRY), f"exported but not registered: {sorted(classes - set(REGISTRY))}"


@pytest.mark.parametrize(
    "layer",
    [Conv2D(3, 4, 3), Dense(5, 2), MaxPool2D(3, 2), ReLU(), Sequential([Dense(5, 2), ReLU()])],
    ids=lambda layer: type(layer).__name__,
)
def test_the_registry_allows_exactly_the_keys_a_layer_saves(layer):
    allowed = set(REGISTRY[layer.layer_type].fields)
    assert allowed == set(layer.config()), (
        f"registered fields {sorted(allowed)}, config keys {sorted(layer.config())}"
    )


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_schema_accepts_every_preset_and_counts_its_parameters(name):
    model = build_model(name)
    assert check_architecture(model.architecture()) == model.parameter_count()


def test_parameters_beyond_the_cap_are_refused_before_anything_is_allocated():
    side = int(MAX_PARAMETERS**0.5) + 1  # side * side weights alone pass the cap
    architecture = [{"type": "Dense", "config": {"in_features": side, "out_features": side}}]
    with pytest.raises(CheckpointError, match="the cap is"):
        check_architecture(architecture)


def test_a_checkpoint_with_optimizer_state_reads_back_every_array(tmp_path):
    model = build_model("mlp")
    extra = {"optim/steps": np.asarray(3), "optim/m/1.W": np.ones((784, 128), np.float32)}
    _, arrays = read_archive(model.save(tmp_path / "c.npz", extra=extra, meta={"kind": "checkpoint"}))
    assert set(extra) <= set(arrays) and int(arrays["optim/steps"]) == 3, sorted(arrays)


def test_a_compressed_archive_is_refused(tmp_path):
    model = build_model("mlp")
    path = model.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as archive:
        np.savez_compressed(path, **{key: archive[key] for key in archive.files})
    with pytest.raises(CheckpointError, match="compressed"):
        load_model(path)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: Dense(True, 4), "in_features"),
        (lambda: Dense(4.0, 4), "in_features"),
        (lambda: Dense(4, 0), "out_features"),
        (lambda: Conv2D(1, -2, 3), "out_channels"),
        (lambda: Conv2D(1, 2, (3, False)), "kernel_size"),
        (lambda: Conv2D(1, 2, "3"), "kernel_size"),
        (lambda: Conv2D(1, 2, 3, stride=0), "stride"),
        (lambda: Conv2D(1, 2, 3, padding=-1), "padding"),
        (lambda: MaxPool2D(2, stride=0), "stride"),
        (lambda: MaxPool2D(2.5), "kernel_size"),
    ],
    ids=["dense-bool", "dense-float", "dense-zero", "conv-negative", "conv-kernel-bool",
         "conv-kernel-str", "conv-stride-0", "conv-padding", "pool-stride-0", "pool-float"],
)  # fmt: skip
def test_layer_constructors_refuse_sizes_that_are_not_positive_whole_numbers(make, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        make()
    assert "\n" not in str(info.value), f"message spans lines: {info.value}"


@pytest.mark.parametrize("preset", ["seed", "mlp"])
def test_a_training_backward_without_the_input_gradient_gives_the_same_parameter_gradients(backend, preset):
    rng = np.random.default_rng(3)
    x = backend.to_device(rng.random((4, 1, 28, 28)), "float64")
    dy = backend.to_device(rng.standard_normal((4, 10)), "float64")
    model = build_model(preset, backend=backend, dtype="float64", seed=1)
    _, saved = model.forward(x, train=True)
    dx, g_full = model.backward(saved, dy)
    no_dx, g_lean = model.backward(saved, dy, need_dx=False)
    assert dx is not None and no_dx is None
    assert sorted(g_full) == sorted(g_lean) == sorted(name for name, _, _ in model.named_parameters())
    for name in g_full:
        difference = float(np.abs(backend.to_host(g_full[name]) - backend.to_host(g_lean[name])).max())
        assert difference == 0.0, f"{name}: gradients differ by {difference:.1e} without the input gradient"


def test_a_training_backward_does_not_visit_the_parameter_free_layers_below_the_first_trained_one():
    visited = []

    class Watch(ReLU):
        def backward(self, saved, dy, need_dx=True):
            visited.append("watch")
            return super().backward(saved, dy, need_dx)

    model = Sequential([Watch(), *build_model("mlp", seed=0).layers])
    _, saved = model.forward(np.random.default_rng(0).random((2, 1, 28, 28)).astype("float32"), train=True)
    model.backward(saved, np.ones((2, 10), "float32"), need_dx=False)
    assert visited == [], "the layer below the first Dense was asked for a gradient nobody uses"
    _, saved = model.forward(np.zeros((2, 1, 28, 28), "float32"), train=True)
    model.backward(saved, np.ones((2, 10), "float32"))
    assert visited == ["watch"], "a full backward must still reach the first layer"


def test_pooling_before_the_relu_gives_the_declared_order_s_numbers_to_the_bit(rng):
    model = build_model("seed", dtype="float64", seed=3)
    order = [layer.layer_type for layer in model.running_order()]
    assert order[:6] == ["Conv2D", "MaxPool2D", "ReLU", "Conv2D", "MaxPool2D", "ReLU"], order
    x = model.backend.to_device(rng.random((4, 1, 28, 28)) - 0.3, "float64")  # negative maxima too
    g = rng.standard_normal((4, 10))
    fused_y, saved = model.forward(x)
    fused_dx, fused = model.backward(saved, g)
    y, kept, grads = x, [], {}
    for layer in model.layers:  # the declared order, one layer after the other
        y, saved = layer.forward(y, True)
        kept.append(saved)
    dy = g
    for i in reversed(range(len(model.layers))):
        dy, own = model.layers[i].backward(kept[i], dy)
        grads.update((f"{i}.{key}", grad) for key, grad in own.items())
    assert np.array_equal(fused_y, y) and np.array_equal(fused_dx, dy)
    assert sorted(grads) == sorted(fused)
    differ = [name for name, grad in grads.items() if not np.array_equal(grad, fused[name])]
    assert not differ, f"gradients differ in {differ}"


class PassThrough(Layer):
    """The identity, under a name of its own."""

    def forward(self, x, train=True, draws=None):
        return x, None

    def backward(self, saved, dy, need_dx=True):
        return dy, {}


def test_running_order_asks_the_layers_whether_they_commute_with_max_pooling_not_their_names():
    class Monotone(PassThrough):
        commutes_with_max_pooling = True

    class WindowMax(PassThrough):
        max_pooling = True

    model = Sequential([Monotone(), WindowMax(), Monotone(), Flatten(), Monotone()])
    order = [type(layer).__name__ for layer in model.running_order()]
    assert order == ["WindowMax", "Monotone", "Monotone", "Flatten", "Monotone"], order


def test_set_grads_stores_a_backward_s_gradients_in_the_layers_that_own_them_at_any_depth(rng):
    kw = {"dtype": "float64"}
    block = Residual(Sequential([Dense(3, 3, rng=0, **kw), ReLU(**kw)]), Dense(3, 3, rng=1, **kw))
    model = Sequential([block, Dense(3, 2, rng=2, **kw)])
    y, saved = model.forward(rng.standard_normal((4, 3)))
    _, grads = model.backward(saved, np.ones(y.shape), need_dx=False)
    assert sorted(grads) == sorted(name for name, _, _ in model.named_parameters())
    assert all(grad is None for _, _, grad in model.named_parameters()), "backward wrote the layers' grads"
    model.set_grads(grads)
    misplaced = [name for name, _, grad in model.named_parameters() if grad is not grads[name]]
    assert not misplaced, f"set_grads put {misplaced} elsewhere"

"""The layer contract as a layer author meets it: a layer declared in this file alone (a parameter, a
buffer and a random stream) builds, trains, saves, loads, moves between dtypes, is guarded by the safe
loader and survives a checkpoint and a resumed run bit for bit; a nested container passes the float64
gradient check and keeps its nested names in files; model files of cnnx 0.1 still load."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnnx.data import Dataset, scale_pixels
from cnnx.errors import CheckpointError
from cnnx.io import load_model
from cnnx.layercheck.gradients import check_gradients
from cnnx.layers import Dense, Flatten, Layer, ReLU, Residual
from cnnx.nn import Sequential, build_model, layer
from cnnx.nn.registry import Number, Size, register_layer, unregister_layer
from cnnx.nn.saving import HEADER_KEY
from cnnx.optim import make_optimizer
from cnnx.training import RunConfig, TrainingInterrupted, fit, run_training

from helpers import StopAtStep, backend_or_skip, blobs, rel_error

FIXTURES = Path(__file__).parent / "fixtures"


# -- a layer of the test's own ----------------------------------------------------------------------


@register_layer(
    fields={"features": Size(), "noise": Number(0, 1)}, param_shapes=lambda c: {"s": (c["features"],)}
)
class NoisyScale(Layer):
    """y = x * s * (1 + noise * e) in training, e ~ N(0, 1) per value from the layer's own stream; y = x * s
    at evaluation. ``s`` (features,) is trained; the buffer ``seen`` counts the training batches."""

    def __init__(self, features: int, noise: float = 0.1, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.features, self.noise = features, noise
        self.params["s"] = self.backend.to_device(np.ones(features), self.dtype)
        self.buffers["seen"] = self._zeros(())
        self.rng = self.random_stream("noise")

    def forward(self, x, train=True, draws=None):
        if not train:
            return x * self.params["s"], None
        e = self.draw(draws, "noise", x.shape, lambda rng, shape: rng.standard_normal(shape))
        factor = 1 + self.noise * self.backend.to_device(e, self.dtype)
        self.buffers["seen"] += 1
        return x * self.params["s"] * factor, (x, factor)

    def backward(self, saved, dy, need_dx=True):
        x, factor = saved
        grads = {"s": (dy * x * factor).sum(axis=0)}
        return (dy * self.params["s"] * factor if need_dx else None), grads

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def config(self):
        return {"features": self.features, "noise": self.noise}


ARCHITECTURE = [
    layer("Flatten"),
    layer("Dense", in_features=784, out_features=16),
    layer("NoisyScale", features=16, noise=0.2),
    layer("ReLU"),
    layer("Dense", in_features=16, out_features=10),
]


@pytest.fixture(scope="module", autouse=True)
def _forget_the_test_layer_afterwards():
    yield
    unregister_layer("NoisyScale")


def blob_dataset() -> Dataset:
    return Dataset(*blobs(160, seed=1), *blobs(40, seed=2), source="synthetic blobs")


def train_a_little(model, steps: int = 6) -> None:
    images, labels = blobs(64, seed=3)
    data = Dataset(images, labels, images[:16], labels[:16], "blobs")
    fit(
        model,
        make_optimizer("adam", model, 1e-2),
        data,
        epochs=1,
        batch_size=64 // steps + 1,
        progress="none",
    )


def test_a_layer_declared_in_one_file_builds_from_a_list_and_from_json_alike():
    from_list = build_model(ARCHITECTURE, seed=3)
    from_json = build_model(json.loads(json.dumps(ARCHITECTURE)), seed=3)
    assert from_list.architecture() == from_json.architecture()
    assert isinstance(from_list.layers[2], NoisyScale) and from_list.layers[2].noise == 0.2
    a, b = from_list.state_dict(), from_json.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a), "one seed built two different models"
    assert "2.s" in a and "2.seen" in a and "2.noise" in a, sorted(a)


def test_the_new_layer_shows_in_the_summary_and_the_registry_counts_its_parameters():
    from cnnx.nn.registry import check_architecture

    summary = build_model(ARCHITECTURE).summary()
    assert " 2 NoisyScale            16      16" in summary and "12,746 parameters" in summary, summary
    assert check_architecture(ARCHITECTURE) == 784 * 16 + 16 + 16 + 16 * 10 + 10


def test_the_new_layer_trains_and_its_buffer_and_stream_move(tmp_path):
    model = build_model(ARCHITECTURE, seed=3)
    before = model.state_dict()
    train_a_little(model)
    after = model.state_dict()
    assert not np.array_equal(before["2.s"], after["2.s"]), "the layer's parameter did not train"
    assert float(after["2.seen"]) > 0 and not np.array_equal(before["2.noise"], after["2.noise"])


def test_the_new_layer_saves_and_loads_with_its_buffer_and_stream(tmp_path):
    model = build_model(ARCHITECTURE, seed=3)
    train_a_little(model)
    path = model.save(tmp_path / "model.npz")
    members = {name.removesuffix(".npy") for name in zipfile.ZipFile(path).namelist()}
    assert {"param/2.s", "buffer/2.seen", "rng/2.noise"} <= members, sorted(members)
    loaded = load_model(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])]
    x = scale_pixels(blobs(8, seed=4)[0])
    assert np.array_equal(model.predict_proba(x), loaded.predict_proba(x))
    # The stream continues where it stood: the next training draws agree too.
    batch = model.backend.to_device(x, model.dtype)
    assert np.array_equal(model.forward(batch, train=True)[0], loaded.forward(batch, train=True)[0])


def test_the_new_layer_moves_between_dtypes_with_its_state():
    model = build_model(ARCHITECTURE, seed=3)
    train_a_little(model)
    wide = model.to(dtype="float64")
    assert (
        wide.layers[2].params["s"].dtype == np.float64 and wide.layers[2].buffers["seen"].dtype == np.float64
    )
    assert float(wide.layers[2].buffers["seen"]) == float(model.layers[2].buffers["seen"])
    x = scale_pixels(blobs(8, seed=4)[0])
    narrow, back = model.predict_proba(x), wide.predict_proba(x)
    assert np.abs(narrow - back).max() < 1e-5, "float32 and float64 copies disagree"
    assert np.array_equal(wide.state_dict()["2.noise"], model.state_dict()["2.noise"])


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"features": 16, "noise": 5.0}, "layer 2 (NoisyScale): noise must be a number in [0, 1], got 5.0"),
        ({"features": "16", "noise": 0.2}, "layer 2 (NoisyScale): features must be a whole number"),
        ({"features": 16, "noise": 0.2, "shell": "rm"}, "layer 2 (NoisyScale): unexpected key 'shell'"),
        ({"noise": 0.2}, "layer 2 (NoisyScale): missing key 'features'"),
    ],
)
def test_the_safe_loader_refuses_a_tampered_config_of_the_new_layer(tmp_path, config, fragment):
    path = build_model(ARCHITECTURE).save(tmp_path / "model.npz")
    with zipfile.ZipFile(path) as archive:
        arrays = {info.filename.removesuffix(".npy"): np.lib.format.read_array(archive.open(info))
                  for info in archive.infolist()}  # fmt: skip
    header = json.loads(str(arrays[HEADER_KEY]))
    header["architecture"][2]["config"] = config
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as refused:
        load_model(path)
    assert fragment in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_a_resumed_run_with_the_new_layer_matches_the_uninterrupted_run_bit_for_bit(tmp_path):
    config = RunConfig(model=ARCHITECTURE, epochs=3, batch_size=32, seed=5, lr=3e-3)
    straight = run_training(config, tmp_path / "straight", dataset=blob_dataset(), progress="none")
    with pytest.raises(TrainingInterrupted):  # at step 7: epoch 2, batch 2
        run_training(
            config, tmp_path / "resumed", dataset=blob_dataset(), stop=StopAtStep(7), progress="none"
        )
    resumed = run_training(config, tmp_path / "resumed", resume=True, dataset=blob_dataset(), progress="none")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"resuming changed {differ} (weights, buffer or stream state)"
    assert float(b["2.seen"]) == 15, "5 batches an epoch for 3 epochs: the buffer counts 15"
    drop = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_two_stochastic_layers_of_a_hand_built_model_draw_different_numbers():
    model = Sequential([NoisyScale(4), NoisyScale(4)], input_shape=(4,))
    first, second = (layer.rng.standard_normal(3) for layer in model.layers)
    assert not np.array_equal(first, second), "two layers share one random stream"
    again = Sequential([NoisyScale(4), NoisyScale(4)], input_shape=(4,))
    assert np.array_equal(again.layers[0].rng.standard_normal(3), first), (
        "a hand-built model is not repeatable"
    )


def test_the_run_seed_reseeds_every_stream():
    a, b, c = (
        build_model(ARCHITECTURE, seed=1),
        build_model(ARCHITECTURE, seed=1),
        build_model(ARCHITECTURE, seed=2),
    )
    draw = lambda model: model.layers[2].rng.standard_normal(3)  # noqa: E731
    assert np.array_equal(draw(a), draw(b)) and not np.array_equal(draw(a), draw(c))


def test_the_divergence_snapshot_restores_the_layers_streams_and_buffers():
    from cnnx.training.divergence import Snapshot

    model = build_model(ARCHITECTURE, seed=3)
    snapshot = Snapshot(model, make_optimizer("adam", model, 1e-3))
    snapshot.take(0)
    before = model.state_dict()
    train_a_little(model)
    snapshot.restore()
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a replay would not draw the same noise"


# -- a nested container ------------------------------------------------------------------------------


def residual_model(backend="cpu", dtype="float64", seed=0):
    body = [
        layer("Dense", in_features=8, out_features=8),
        layer("ReLU"),
        layer("Dense", in_features=8, out_features=8),
    ]
    architecture = [
        layer("Flatten"),
        layer("Dense", in_features=2 * 3 * 3, out_features=8),
        layer("Residual", body=layer("Sequential", layers=body), shortcut=None),
        layer("Residual", body=layer("Dense", in_features=8, out_features=4),
              shortcut=layer("Dense", in_features=8, out_features=4, init="he")),
        layer("ReLU"),
        layer("Dense", in_features=4, out_features=3),
    ]  # fmt: skip
    return build_model(architecture, backend=backend, dtype=dtype, seed=seed, input_shape=(2, 3, 3))


def test_a_nested_residual_model_passes_the_float64_gradient_check(backend, rng):
    model = residual_model(backend)
    errors = check_gradients(model, rng.standard_normal((4, 2, 3, 3)), rng)
    names = {"x", "2.body.0.W", "2.body.2.b", "3.body.W", "3.shortcut.W", "3.shortcut.b"}
    assert names <= set(errors), sorted(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: relative error {errors[worst]:.2e}"


ON_GPU = pytest.mark.gpu


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", "float32"),
        pytest.param("gpu", "float32", marks=ON_GPU),
        pytest.param("gpu", "float64", marks=ON_GPU),
    ],
)
def test_a_nested_residual_model_computes_what_the_cpu_float64_one_computes(device, dtype, rng):
    reference = residual_model("cpu", "float64")
    follower = reference.to(backend_or_skip(device), dtype)
    x, g = rng.standard_normal((6, 2, 3, 3)), rng.standard_normal((6, 3))
    outputs, grads = [], []
    for model in (reference, follower):
        y, saved = model.forward(model.backend.to_device(x, model.dtype), train=True)
        _, own = model.backward(saved, model.backend.to_device(g, model.dtype))
        outputs.append(model.backend.to_host(y))
        grads.append({name: model.backend.to_host(grad) for name, grad in own.items()})
    bound = (
        1e-5 if dtype == "float32" else 1e-12
    )  # float32 rounding of a few short sums; float64: exact order
    assert rel_error(outputs[1], outputs[0]) < bound
    worst = max(grads[0], key=lambda k: rel_error(grads[1][k], grads[0][k]))
    assert rel_error(grads[1][worst], grads[0][worst]) < bound, f"{worst} differs"


def test_a_nested_model_keeps_its_nested_names_through_save_and_load(tmp_path):
    model = residual_model()
    path = model.save(tmp_path / "nested.npz")
    members = {name.removesuffix(".npy") for name in zipfile.ZipFile(path).namelist()}
    assert {"param/2.body.0.W", "param/2.body.2.b", "param/3.shortcut.W"} <= members, sorted(members)
    loaded = load_model(path)
    assert loaded.architecture() == model.architecture()
    x = np.random.default_rng(0).random((5, 2, 3, 3))
    assert np.array_equal(model.predict_proba(x), loaded.predict_proba(x))
    assert "    0 Dense" in loaded.summary() and "shortcut Dense" in loaded.summary(), loaded.summary()


def test_a_residual_whose_branches_disagree_in_shape_is_refused():
    body = Dense(8, 4)
    with pytest.raises(Exception, match="the body gives"):
        Sequential([Flatten(), Dense(784, 8), Residual(body), ReLU()], input_shape=(1, 28, 28))


def test_containers_nested_too_deep_are_refused_before_building():
    entry = layer("Dense", in_features=4, out_features=4)
    for _ in range(12):
        entry = layer("Residual", body=entry)
    with pytest.raises(CheckpointError, match="nest more than"):
        build_model([entry], input_shape=(4, 1, 1))


# -- files written by cnnx 0.1 ------------------------------------------------------------------------

# The fixture: a small CNN of every 0.1 layer type (conv with padding and with stride 2, both poolings,
# Flatten, Dense, ReLU) written by cnnx 0.1 (format version 1, flat names) after training on blobs, and
# the class probabilities it gave then for blobs(20, seed=5).
V1_CLASSES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2
V1_TOP_PROBABILITY = [
    0.9993, 0.9975, 0.991, 0.9929, 0.9859, 0.9899, 0.9899, 0.9507, 0.985, 0.9929,
    0.9981, 0.996, 0.995, 0.9909, 0.9906, 0.9965, 0.9849, 0.9642, 0.9871, 0.9948,
]  # fmt: skip


def test_a_model_file_written_by_cnnx_0_1_loads_and_predicts_the_same_classes():
    model = load_model(FIXTURES / "model_v1.npz")
    assert model.name == "fixture-v1" and model.parameter_count() == 832
    probabilities = model.predict_proba(scale_pixels(blobs(20, seed=5)[0]))
    assert probabilities.argmax(axis=1).tolist() == V1_CLASSES
    top = probabilities.max(axis=1)
    assert all(math.isclose(p, q, abs_tol=1e-4) for p, q in zip(top, V1_TOP_PROBABILITY, strict=True)), top

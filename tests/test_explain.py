"""``cnnx explain``: saliency equals finite differences, Grad-CAM equals a hand computation, the gallery
holds the top losses, every preset gets every figure it can have (and a reason for the others), and
nothing is drawn from stale state or left changed in the model."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.errors import ConfigError
from cnnx.explain import _cam_parts, blocks, cam_layer, frozen, grad_cam, hires_cam, saliency, top_losses
from cnnx.explain.report import explain_run
from cnnx.nn.layers import Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from cnnx.nn.model import Sequential
from cnnx.nn.presets import PRESETS, build_model

from helpers import blobs, train_blob_run


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28))


def _with_running_statistics(model, seed: int = 3):
    """Running averages away from their initial 0 and 1, so that evaluation differs from the identity."""
    rng = np.random.default_rng(seed)
    for _, layer in model.named_layers():
        if "running_var" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.normal(0, 0.3, layer.buffers["running_mean"].shape)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, layer.buffers["running_var"].shape)
    return model


@pytest.mark.parametrize("preset", ["seed", "cnn-bn", "resnet"])
def test_the_frozen_copy_computes_the_evaluation_output(preset):
    model = _with_running_statistics(build_model(preset, dtype="float64", seed=1))
    x = model.backend.to_device(_images(3))
    logits, _ = frozen(model).forward(x, train=True)
    assert np.array_equal(logits, model(x))


@pytest.mark.parametrize("preset", ["seed", "cnn-bn"])
def test_saliency_equals_finite_differences_in_float64(preset):
    model = _with_running_statistics(build_model(preset, dtype="float64", seed=1))
    x = _images(2, seed=5)
    heat, chosen = saliency(model, x)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for n in range(2):
        for _ in range(6):
            i, j = (int(v) for v in rng.integers(0, 28, 2))
            up, down = x.copy(), x.copy()
            up[n, 0, i, j] += eps
            down[n, 0, i, j] -= eps
            slope = (model(up)[n, chosen[n]] - model(down)[n, chosen[n]]) / (2 * eps)
            error = abs(abs(slope) - heat[n, i, j]) / max(abs(slope), 1e-8)
            assert error < 1e-6 or abs(slope) < 1e-9, (preset, n, i, j, slope, heat[n, i, j])


def _small_cam_model():
    layers = [Conv2D(1, 3, 3, dtype="float64"), ReLU(dtype="float64"), GlobalAvgPool2D(dtype="float64"),
              Dense(3, 4, dtype="float64")]  # fmt: skip
    return Sequential(layers, input_shape=(1, 8, 8))


def test_grad_cam_equals_a_hand_computation():
    model = _small_cam_model()
    x = np.random.default_rng(2).random((3, 1, 8, 8))
    assert blocks(model) == [1] and cam_layer(model) == 1
    cams, chosen = grad_cam(model, x)
    maps = model.layers[1](model.layers[0](x))  # A: the block's maps, (N, 3, 6, 6)
    weights = model.layers[3].params["W"]  # (3, 4): the score of class c is mean(A_k) W[k, c] + b[c]
    alpha = weights[:, chosen].T / (maps.shape[2] * maps.shape[3])  # d score / d A_k, the same everywhere
    expected = np.maximum(np.einsum("nk,nkhw->nhw", alpha, maps), 0)
    assert np.allclose(cams, expected, rtol=1e-12, atol=1e-15)
    assert np.array_equal(chosen, model(x).argmax(axis=1))


def test_hires_cam_equals_a_hand_computation():
    model = _small_cam_model()
    x = np.random.default_rng(2).random((3, 1, 8, 8))
    cams, chosen = hires_cam(model, x)
    maps = model.layers[1](model.layers[0](x))
    weights = model.layers[3].params["W"]
    grads = weights[:, chosen].T[:, :, None, None] / (maps.shape[2] * maps.shape[3])  # d score / d A
    assert np.allclose(cams, np.maximum((grads * maps).sum(axis=1), 0), rtol=1e-12, atol=1e-15)


def test_the_element_wise_map_sums_to_the_score_where_the_rest_is_linear():
    """Pooled maps, flattened, one dense layer: the score is linear in A, so sum(dscore/dA * A) is the
    score less the class's bias; the averaged Grad-CAM weights have no such identity."""
    f64 = {"dtype": "float64"}
    layers = [Conv2D(1, 4, 3, **f64), ReLU(**f64), MaxPool2D(2, **f64), Flatten(**f64), Dense(36, 5, **f64)]
    model = Sequential(layers, input_shape=(1, 8, 8))
    x = np.random.default_rng(5).random((4, 1, 8, 8))
    assert cam_layer(model) == 2
    maps, grads, chosen = _cam_parts(model, x, None)
    scores = model(x)[np.arange(4), chosen] - model.layers[4].params["b"][chosen]
    assert np.allclose((grads * maps).sum(axis=(1, 2, 3)), scores, rtol=1e-12)


def test_grad_cam_without_a_convolution_is_one_line():
    with pytest.raises(ConfigError, match="Grad-CAM needs a convolutional block, and gru has none"):
        grad_cam(build_model("gru"), _images(1))


def test_the_gallery_holds_the_misclassified_items_with_the_largest_losses():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(5), size=200)
    labels = rng.integers(0, 5, 200)
    picked = top_losses(p, labels, 10)
    loss = -np.log(p[np.arange(200), labels])
    wrong = np.flatnonzero(p.argmax(axis=1) != labels)
    assert list(picked) == list(wrong[np.argsort(-loss[wrong])][:10])
    assert all(p[i].argmax() != labels[i] for i in picked)
    assert loss[picked].min() >= np.sort(loss[wrong])[-10]


@pytest.fixture(scope="module")
def test_set():
    images, labels = blobs(60, seed=3)
    return images, labels


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_gets_every_figure_it_can_have(tmp_path, test_set, preset):
    model = build_model(preset, seed=0)
    before = model.state_dict()
    images, labels = test_set
    done = explain_run(model, images, labels, tmp_path, map_items=60)
    drawn = {title.split(",")[0] for title, _, _ in done["figures"]}
    skipped = dict(done["skipped"])
    convolutional = bool(blocks(model))
    expected = {"Saliency", "Top losses", "Feature map"}
    if convolutional:
        expected |= {"First filters", "Activation maps", "Grad-CAM"}
    assert expected <= drawn, (preset, drawn, skipped)
    if not convolutional:
        assert "Grad-CAM" in skipped and "convolutional block" in skipped["Grad-CAM"]
    for _, file, _ in done["figures"]:
        assert (tmp_path / file).stat().st_size > 1000
    page = done["index"].read_text()
    assert all(file in page for _, file, _ in done["figures"]) and all(t in page for t in skipped)
    after = model.state_dict()  # nothing drawn changed the model: weights, buffers, random streams
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_explaining_twice_draws_the_same_numbers():
    model = _with_running_statistics(build_model("seed-dropout", dtype="float64", seed=2))
    x = _images(3)
    first = saliency(model, x)[0], grad_cam(model, x)[0]
    second = saliency(model, x)[0], grad_cam(model, x)[0]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_cnnx_explain_on_a_run_writes_the_figures_and_an_index(tmp_path):
    from PIL import Image

    run, _ = train_blob_run(tmp_path)
    picture = tmp_path / "shirt.png"
    Image.fromarray((blobs(1, seed=9)[0][0]).astype(np.uint8)).save(picture)
    done = CliRunner().invoke(cli, ["explain", str(run), str(picture), "--map-items", "40"])
    assert done.exit_code == 0, done.output
    out = run / "explain"
    assert f"all of them: {out / 'index.html'}" in done.output
    for name in ("filters.png", "activations-1.png", "saliency.png", "gradcam.png", "top-losses.png",
                 "features-pca.png"):  # fmt: skip
        assert (out / name).is_file(), name
    elsewhere = CliRunner().invoke(cli, ["explain", str(run / "model.npz"), "--out", str(tmp_path / "x")])
    assert elsewhere.exit_code == 0 and (tmp_path / "x" / "index.html").is_file(), elsewhere.output


def test_a_bad_run_is_one_line(tmp_path):
    done = CliRunner().invoke(cli, ["explain", str(tmp_path / "nothing")])
    assert (
        done.exit_code == 1 and done.output.startswith("cnnx: error: ") and len(done.output.splitlines()) == 1
    )

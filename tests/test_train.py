"""The training loop: it learns, it is reproducible, it records a run, it stops on divergence."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnx.training.loop as loop_module
from cnnx.backends import NumpyBackend
from cnnx.data import CLASS_NAMES, Dataset, scale_pixels
from cnnx.errors import ConfigError, DivergenceError
from cnnx.io import load_model
from cnnx.io.checkpoint import load_checkpoint
from cnnx.losses import softmax_cross_entropy
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import evaluate, fit, shuffle_rng, train_step

from helpers import blobs

RUN_FILES = ("metrics.json", "model.npz", "curves.png", "confusion_matrix.png", "samples.png")
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "skipped", "seconds"}


def blob_dataset(train: int = 200, test: int = 50) -> Dataset:
    return Dataset(*blobs(train, seed=1), *blobs(test, seed=2), source="synthetic blobs")


def mlp_and_adam(seed: int = 0, lr: float = 1e-3, backend=None):
    model = build_model("mlp", backend=backend, seed=seed)
    return model, make_optimizer("adam", model, lr)


def train_blobs(epochs: int = 2, batch_size: int = 32, seed: int = 0, **options):
    """Train the mlp with Adam on 200 blob images (7 batches of 32 an epoch): (model, optimizer, history)."""
    model, optimizer = mlp_and_adam(seed=seed)
    history = fit(model, optimizer, blob_dataset(), epochs=epochs, batch_size=batch_size, seed=seed,
                  progress="none", **options)  # fmt: skip
    return model, optimizer, history


class CountingBackend(NumpyBackend):
    """The CPU backend, counting device-to-host reads (each one a synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def to_host(self, array):
        self.reads += 1
        return super().to_host(array)


@pytest.fixture(scope="module")
def learned():
    """The history of 4 epochs on the blobs, shared by the tests that only read it."""
    return train_blobs(epochs=4)[2]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A run with every output written (seed 7, limit 200 recorded): (model, optimizer, history, run dir)."""
    out = tmp_path_factory.mktemp("run")
    model, optimizer, history = train_blobs(seed=7, out_dir=out, config={"limit": 200})
    return model, optimizer, history, out


def test_training_on_separable_blobs_reduces_the_loss(learned):
    history = learned
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    assert last < 0.5 * first, f"train loss went from {first:.4f} to {last:.4f}, expected at least halved"


def test_training_on_separable_blobs_classifies_the_test_set(learned):
    history = learned
    assert history[-1]["test_accuracy"] >= 0.9, f"test accuracy {history[-1]['test_accuracy']:.3f} < 0.9"


def test_the_same_seed_gives_identical_history_losses():
    runs = [[(row["train_loss"], row["test_loss"]) for row in train_blobs(seed=3)[2]] for _ in range(2)]
    assert runs[0] == runs[1], f"two runs with seed 3 differ: {runs[0]} vs {runs[1]}"


def test_different_seeds_shuffle_the_batches_differently():
    a, b = shuffle_rng(0).permutation(100), shuffle_rng(1).permutation(100)
    assert (a != b).any(), "seeds 0 and 1 gave the same batch order"


def test_history_rows_hold_exactly_the_documented_fields(learned):
    history = learned
    assert set(history[0]) == HISTORY_KEYS, f"history keys {sorted(history[0])} != {sorted(HISTORY_KEYS)}"


def test_train_step_returns_the_summed_loss_and_correct_count_as_device_scalars():
    model, optimizer = mlp_and_adam()
    images, labels = blobs(16, seed=4)
    x, y = scale_pixels(images), labels.astype(np.int64)
    mean_loss, _ = softmax_cross_entropy(np, model(x), y)
    expected_correct = int((model(x).argmax(axis=1) == y).sum())
    loss_sum, correct = train_step(model, optimizer, x, y)
    assert np.shape(loss_sum) == () and np.shape(correct) == (), "train_step must return 0-d arrays"
    gap = abs(float(loss_sum) - 16 * float(mean_loss))
    assert gap < 1e-4, f"loss sum {float(loss_sum)} is {gap:.2e} away from 16 x mean loss {float(mean_loss)}"
    assert int(correct) == expected_correct, f"correct {int(correct)} != {expected_correct}"


def test_evaluate_matches_the_model_predictions():
    model, _ = mlp_and_adam()
    images, labels = blobs(70, seed=5)
    loss, accuracy, predictions = evaluate(model, images, labels.astype(np.int64), batch_size=32)
    probabilities = model.predict_proba(scale_pixels(images))
    expected_loss = -np.log(probabilities[np.arange(70), labels]).mean()
    assert (predictions == probabilities.argmax(axis=1)).all(), "evaluate's predictions differ from argmax"
    assert accuracy == (predictions == labels).mean(), f"accuracy {accuracy} disagrees with the predictions"
    assert abs(loss - expected_loss) < 1e-5, f"evaluate loss {loss:.6f} != {expected_loss:.6f}"


def test_loss_and_accuracy_are_read_back_per_epoch_not_per_batch():
    backend = CountingBackend()
    model, optimizer = mlp_and_adam(backend=backend)
    fit(model, optimizer, blob_dataset(), epochs=2, batch_size=8, seed=0, progress="none")
    # 25 batches an epoch; per epoch: the loss and correct sums, then evaluate's loss and predictions.
    assert backend.reads <= 2 * 4, f"{backend.reads} device-to-host reads in 2 epochs of 25 batches"


def test_fit_writes_every_run_output(recorded):
    out = recorded[3]
    missing = [name for name in RUN_FILES if not (out / name).is_file()]
    assert not missing, f"run directory lacks {missing}"


def test_metrics_json_records_config_history_and_per_class_results(recorded):
    _, _, history, out = recorded
    record = json.loads((out / "metrics.json").read_text())
    config = record["config"]
    expected = {"model": "mlp", "lr": 1e-3, "epochs": 2, "batch_size": 32, "seed": 7, "device": "cpu",
                "dtype": "float32", "limit": 200, "data_source": "synthetic blobs"}  # fmt: skip
    wrong = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    assert not wrong, f"config entries (recorded, expected): {wrong}"
    assert config["optimizer"] == "adam" and set(config["versions"]) >= {"cnnx", "numpy", "cupy"}
    assert record["history"] == history, "metrics.json history differs from the returned history"
    assert record["test_accuracy"] == history[-1]["test_accuracy"], "final accuracy is not the last epoch's"
    matrix = np.array(record["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 50, f"matrix {matrix.shape} sums to {matrix.sum()}"
    assert list(record["per_class"])[:10] == list(CLASS_NAMES), f"per-class keys {list(record['per_class'])}"
    assert set(record["per_class"]["Bag"]) == {"precision", "recall", "f1", "support"}


def test_checkpoint_holds_the_trained_weights(recorded):
    model, _, _, out = recorded
    loaded = load_model(out / "model.npz").state_dict()
    worst = max(float(np.abs(loaded[k] - v).max()) for k, v in model.state_dict().items())
    assert worst == 0.0, f"checkpoint weights differ from the model's by up to {worst}"


def test_checkpoint_holds_optimizer_state_that_restores_exactly(recorded):
    _, optimizer, _, out = recorded
    state = load_checkpoint(out / "model.npz").optimizer_state
    _, restored = mlp_and_adam()
    restored.load_state_dict(state, np.asarray)
    live, back = optimizer.state_dict(np.asarray), restored.state_dict(np.asarray)
    assert set(live) == set(back), f"restored state keys differ: {sorted(set(live) ^ set(back))}"
    differing = [k for k in live if not np.array_equal(live[k], back[k])]
    assert not differing and back["steps"] == 14, f"differing entries {differing}, steps {back['steps']} (14)"


def test_checkpoint_meta_records_the_epoch_and_the_optimizer(recorded):
    meta = load_checkpoint(recorded[3] / "model.npz").meta
    settings = meta["settings"]
    got = (meta["epoch"], meta["optimizer"]["name"], settings["batch_size"], settings["seed"])
    assert got == (2, "adam", 32, 7), f"meta (epoch, optimizer, batch size, seed) {got} != (2, adam, 32, 7)"


def test_checkpoint_rng_state_continues_the_batch_order(recorded):
    meta = load_checkpoint(recorded[3] / "model.npz").meta
    resumed = np.random.default_rng()
    resumed.bit_generator.state = meta["rng_state"]
    fresh = shuffle_rng(7)
    fresh.permutation(200), fresh.permutation(200)  # the two epochs already trained
    assert (resumed.permutation(200) == fresh.permutation(200)).all(), "the saved RNG state does not continue"


def test_fit_refuses_a_run_directory_that_holds_files(tmp_path):
    (tmp_path / "notes.txt").write_text("earlier run")
    with pytest.raises(ConfigError, match="not empty"):
        train_blobs(epochs=1, out_dir=tmp_path)


def _nan_from_call(monkeypatch, bad_call: int) -> None:
    """Make the ``bad_call``-th train_step (1-based) report a NaN loss, as a diverged step would."""
    real, calls = loop_module.train_step, {"n": 0}

    def step(model, optimizer, x, labels, **options):
        calls["n"] += 1
        loss, correct = real(model, optimizer, x, labels, **options)
        return (loss * np.nan if calls["n"] == bad_call else loss), correct

    monkeypatch.setattr(loop_module, "train_step", step)


def test_a_nan_loss_names_the_epoch_and_batch(monkeypatch):
    _nan_from_call(monkeypatch, bad_call=7 + 3)  # 7 batches an epoch: epoch 2, batch 3
    with pytest.raises(DivergenceError, match=r"epoch 2, batch 3\b"):
        train_blobs(epochs=3)


def test_divergence_keeps_the_last_good_checkpoint_loadable(monkeypatch, tmp_path):
    _nan_from_call(monkeypatch, bad_call=7 + 3)
    with pytest.raises(DivergenceError, match="last good checkpoint"):
        train_blobs(epochs=3, out_dir=tmp_path)
    meta = load_checkpoint(tmp_path / "model.npz").meta
    load_model(tmp_path / "model.npz")  # raises if the file holds NaN or is not a model
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["epoch"] == 1, f"checkpoint is from epoch {meta['epoch']}, expected the last good one, 1"
    assert record["status"] == "diverged" and len(record["history"]) == 1, f"metrics.json: {record['status']}"


def test_an_exploding_learning_rate_stops_the_run():
    model = build_model("mlp", seed=0)
    optimizer = make_optimizer("sgd", model, 1e30)
    with pytest.raises(DivergenceError, match="epoch 1"):
        fit(model, optimizer, blob_dataset(), epochs=2, batch_size=32, seed=0, progress="none")


@pytest.mark.parametrize("mode, lines", [("lines", 2), ("none", 0)])
def test_progress_prints_one_line_per_epoch_or_nothing(capsys, mode, lines):
    model, optimizer = mlp_and_adam()
    fit(model, optimizer, blob_dataset(), epochs=2, batch_size=64, seed=0, progress=mode)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == lines, f"progress={mode!r} printed {len(out)} lines, expected {lines}: {out}"

"""A validation split from the training set, the best epoch's weights in best.npz, early stopping, and the
commands that pick best.npz from a run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.io import load_model
from cnnx.training import RunConfig, evaluate, run_training
from cnnx.training.early import EarlyStopping, split_validation
from cnnx.training.interrupt import TrainingInterrupted

from helpers import StopAtStep, blobs, write_blob_idx


def dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


def test_the_split_is_seeded_stratified_and_disjoint():
    data = dataset()
    rest, images, labels = split_validation(data, 0.2, seed=0)
    assert len(labels) == 40 and len(rest.train_labels) == 160
    assert np.bincount(labels).tolist() == [4] * 10, "stratified: four of each class"
    again = split_validation(data, 0.2, seed=0)
    assert np.array_equal(again[1], images) and not np.array_equal(
        split_validation(data, 0.2, seed=1)[1], images
    )
    held = {img.tobytes() for img in images}
    assert not any(img.tobytes() in held for img in rest.train_images), "a held-out image is also trained on"
    assert rest.test_images is data.test_images


def test_early_stopping_counts_epochs_without_a_better_loss():
    early = EarlyStopping(patience=2)
    seen = [early.update(epoch, loss) for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75, 0.71], start=1)]
    assert seen == [
        (True, False),
        (True, False),
        (False, False),
        (True, False),
        (False, False),
        (False, True),
    ]
    assert early.best_epoch == 4 and early.best_loss == 0.7
    restored = EarlyStopping(2)
    restored.load(early.state())
    assert restored.state() == early.state()


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="early_stopping needs a validation split"):
        RunConfig(early_stopping=2)
    with pytest.raises(ConfigError, match=r"validation must be a fraction in \(0, 0.5\]"):
        RunConfig(validation=0.7)


VALIDATED = RunConfig(model="mlp", epochs=8, batch_size=32, lr=0.02, validation=0.2, early_stopping=2)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("validated") / "run"
    return run_training(VALIDATED, out, dataset=dataset(), progress="none"), out


def test_every_epoch_is_scored_on_the_validation_split(validated):
    run, _ = validated
    assert all(0 <= row["val_accuracy"] <= 1 and row["val_loss"] > 0 for row in run.history)
    assert len(run.images) == 160, "the validation images are not trained on"


def test_best_npz_holds_the_weights_of_the_best_validation_epoch(validated):
    run, out = validated
    record = json.loads((out / "metrics.json").read_text())
    losses = [row["val_loss"] for row in run.history]
    best_epoch = int(np.argmin(losses)) + 1
    assert record["best"] == {"file": "best.npz", "epoch": best_epoch, "val_loss": min(losses)}
    _, images, labels = split_validation(dataset(), 0.2, seed=0)
    loss, _, _ = evaluate(load_model(out / "best.npz"), images, labels.astype(np.int64), batch_size=32)
    assert loss == pytest.approx(min(losses), rel=1e-6)


def test_early_stopping_ends_the_run_patience_epochs_after_the_best(tmp_path):
    # Shuffled labels: nothing generalises, so the validation loss soon rises while training goes on.
    images, labels = blobs(200, seed=1)
    noise = Dataset(images, np.random.default_rng(0).permutation(labels), *blobs(50, seed=2), source="noise")
    config = VALIDATED.replace(epochs=12, lr=0.01)
    run = run_training(config, tmp_path / "run", dataset=noise, progress="none")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    losses = [row["val_loss"] for row in run.history]
    stop = record["stopped_early"]
    assert stop["epoch"] == len(run.history) == stop["best_epoch"] + 2 < config.epochs
    assert min(losses[stop["best_epoch"] :]) >= losses[stop["best_epoch"] - 1]
    assert record["status"] == "completed" and record["best"]["epoch"] == stop["best_epoch"]


def test_a_validated_run_resumes_to_the_same_history_and_best(validated, tmp_path):
    run, out = validated
    with pytest.raises(TrainingInterrupted):
        run_training(VALIDATED, tmp_path / "run", dataset=dataset(), progress="none", stop=StopAtStep(12))
    resumed = run_training(VALIDATED, tmp_path / "run", resume=True, dataset=dataset(), progress="none")
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(run.history)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best"] == json.loads(
        (out / "metrics.json").read_text())["best"]  # fmt: skip


def test_evaluate_and_predict_take_a_run_directory_and_use_its_best_weights(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--data-dir", str(data), "--batch-size", "32", "--epochs", "3",
            "--validation", "0.25", "--early-stopping", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert (out / "best.npz").is_file()
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--data-dir", str(data)])
    assert result.exit_code == 0 and result.output.startswith(f"{out / 'best.npz'}: mlp on 40 test images")
    (out / "best.npz").unlink()
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--data-dir", str(data)])
    assert result.exit_code == 0 and result.output.startswith(f"{out / 'model.npz'}: ")

"""A validation split from the training set, the best epoch's weights in best.npz, early stopping, and the
commands that pick best.npz from a run directory."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.io import load_model
from cnnx.training import RunConfig, evaluate, plots, run_training
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


def test_with_a_min_delta_only_a_fall_beyond_it_is_an_improvement():
    early = EarlyStopping(patience=2, min_delta=0.1)
    seen = [early.update(epoch, loss)[0] for epoch, loss in enumerate([1.0, 0.95, 0.85, 0.8, 0.7], start=1)]
    assert seen == [True, False, True, False, True], f"improvements {seen}"
    assert (early.best_epoch, early.best_loss) == (5, 0.7), (early.best_epoch, early.best_loss)


def test_a_runs_min_delta_sets_the_epoch_kept_in_best_npz():
    config = VALIDATED.replace(epochs=4, min_delta=10.0)  # no later epoch falls 10 below the first
    run = run_training(config, dataset=dataset(), progress="none")
    assert run.early.best_epoch == 1 and run.early.min_delta == 10.0, (
        run.early.best_epoch,
        run.early.min_delta,
    )


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


# -- what an early-stopped run reports ---------------------------------------------------------------


def noise() -> Dataset:
    """Shuffled labels: nothing generalises, so the validation loss soon rises and early stopping ends the
    run a few epochs after its best one."""
    images, labels = blobs(200, seed=1)
    return Dataset(images, np.random.default_rng(0).permutation(labels), *blobs(50, seed=2), source="noise")


NOISY = VALIDATED.replace(epochs=12, lr=0.01)


DRAWN = {}  # what the stopped_early run's confusion matrix and sample figures were drawn with


def spy(name):
    draw = getattr(plots, name)

    def spied(*args, **kwargs):
        DRAWN[name] = (args, kwargs)
        return draw(*args, **kwargs)

    return spied


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
    """(run, its directory, its metrics.json, what it printed: the echoed lines, then the progress lines)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    said = []
    with contextlib.redirect_stdout(io.StringIO()) as printed, pytest.MonkeyPatch.context() as patch:
        for name in ("plot_confusion_matrix", "plot_samples"):
            patch.setattr(plots, name, spy(name))
        run = run_training(NOISY, out, dataset=noise(), progress="lines", echo=said.append)
    said += printed.getvalue().splitlines()
    return run, out, json.loads((out / "metrics.json").read_text()), said


def test_early_stopping_ends_the_run_patience_epochs_after_the_best(stopped_early):
    run, _, record, _ = stopped_early
    losses = [row["val_loss"] for row in run.history]
    stop = record["stopped_early"]
    assert stop["epoch"] == len(run.history) == stop["best_epoch"] + 2 < NOISY.epochs
    assert min(losses[stop["best_epoch"] :]) >= losses[stop["best_epoch"] - 1]
    assert record["status"] == "completed" and record["best"]["epoch"] == stop["best_epoch"]


def best_npz_results(out, data: Dataset) -> tuple[float, list]:
    """The test accuracy and confusion matrix of the weights in ``out``'s best.npz, scored afresh."""
    from cnnx.training.metrics import confusion_matrix

    labels = data.test_labels.astype(np.int64)
    _, accuracy, predictions = evaluate(load_model(out / "best.npz"), data.test_images, labels, batch_size=32)
    return accuracy, confusion_matrix(labels, predictions, 10).tolist()


def test_an_early_stopped_run_says_its_results_are_those_of_best_npz(stopped_early):
    run, _, record, _ = stopped_early
    best = record["best"]["epoch"]
    assert best < len(run.history), "the fixture should stop after its best epoch"
    assert record["results_of"] == {"file": "best.npz", "epoch": best}, record.get("results_of")
    assert record["test_accuracy"] == run.history[best - 1]["test_accuracy"]


def test_an_early_stopped_runs_confusion_matrix_is_that_of_best_npz(stopped_early):
    _, out, record, _ = stopped_early
    accuracy, matrix = best_npz_results(out, noise())
    assert record["confusion_matrix"] == matrix, "the confusion matrix is not best.npz's"
    assert record["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_the_confusion_matrix_figure_is_best_npzs_and_says_so(stopped_early):
    run, _, record, _ = stopped_early
    (matrix, *_), options = DRAWN["plot_confusion_matrix"]
    assert matrix.tolist() == record["confusion_matrix"], "the figure shows other weights than the record"
    title = f"best.npz: best epoch {record['best']['epoch']} of {len(run.history)}"
    assert options.get("title") == f"test set, {title}", options


def test_the_sample_figure_shows_best_npzs_predictions_and_says_so(stopped_early):
    run, out, record, _ = stopped_early
    (_, _, predictions, *_), options = DRAWN["plot_samples"]
    _, _, best = evaluate(load_model(out / "best.npz"), noise().test_images, noise().test_labels, 32)
    assert np.array_equal(predictions, best), "the samples are not best.npz's predictions"
    assert options.get("title") == f"best.npz: best epoch {record['best']['epoch']} of {len(run.history)}"


def test_the_last_epochs_numbers_stay_in_the_history(stopped_early):
    run, _, record, _ = stopped_early
    assert record["history"][-1]["epoch"] == len(run.history) == record["stopped_early"]["epoch"]


def test_a_run_resumed_after_its_best_epoch_reports_best_npz_too(stopped_early, tmp_path):
    run, _, record, _ = stopped_early
    batches = -(-160 // 32)
    after_best = record["best"]["epoch"] * batches + 2  # a step into the epoch after the best one
    with pytest.raises(TrainingInterrupted):
        run_training(NOISY, tmp_path / "run", dataset=noise(), progress="none", stop=StopAtStep(after_best))
    run_training(NOISY, tmp_path / "run", resume=True, dataset=noise(), progress="none")
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert resumed["results_of"] == record["results_of"]
    assert resumed["confusion_matrix"] == record["confusion_matrix"]


def test_best_npz_records_the_epoch_the_history_finds_best(validated):
    from cnnx.io.modelfile import read_archive

    run, out = validated
    header, _ = read_archive(out / "best.npz")
    losses = [row["val_loss"] for row in run.history]
    assert header["meta"]["epoch"] == int(np.argmin(losses)) + 1, "best.npz names another epoch"


def test_early_stopping_with_patience_two_on_a_flat_loss_stops_at_epoch_three():
    early = EarlyStopping(patience=2)
    stopped = next((epoch for epoch in range(1, 6) if early.update(epoch, 0.5)[1]), None)
    assert stopped == 3, f"stopped at epoch {stopped} (None: never)"


# -- what the console says ------------------------------------------------------------------------------


def test_each_epoch_line_shows_the_validation_loss_and_accuracy(stopped_early):
    lines = [line for line in stopped_early[3] if line.startswith("epoch ")]
    shown = [re.search(r"  val loss \d+\.\d{4} acc \d\.\d{4}  test loss ", line) for line in lines]
    assert lines and all(shown), lines


def test_a_run_that_stops_early_says_so_and_why(stopped_early):
    _, _, record, said = stopped_early
    stop, best = record["stopped_early"]["epoch"], record["best"]["epoch"]
    expected = f"stopped early after epoch {stop}: no better validation loss for 2 epochs since epoch {best}"
    assert any(line.startswith(expected) for line in said), said


def test_the_data_line_counts_train_validation_and_test_images(stopped_early):
    said = stopped_early[3]
    data = [line for line in said if line.startswith("data: ")]
    assert data and data[0].startswith("data: 160 train / 40 validation / 50 test images"), said


def test_the_final_line_names_the_best_epoch_and_best_npz(stopped_early):
    from cnnx.training.progress import summary

    run, out, record, _ = stopped_early
    best, accuracy = record["best"]["epoch"], record["test_accuracy"]
    line = summary(run)
    assert line.startswith(f"test accuracy {accuracy:.4f} at best epoch {best} of {len(run.history)} "
                           f"(best.npz); outputs in {out}"), line  # fmt: skip

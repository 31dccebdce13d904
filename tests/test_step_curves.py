"""max_steps, log_every and eval_every: runs that end in the middle of an epoch, step curves, and resuming
them exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.io.checkpoint import load_checkpoint
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import RunConfig, train_run
from cnnx.training.interrupt import TrainingInterrupted

from helpers import StopAtStep, blobs, write_blob_idx

# 200 images in batches of 32: 7 batches an epoch; 17 steps end in the middle of the third epoch.
SETTINGS = {"epochs": 5, "batch_size": 32, "seed": 0, "progress": "none", "max_steps": 17, "log_every": 4,
            "eval_every": 5}  # fmt: skip


def dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


def fresh():
    model = build_model("mlp", seed=0)
    return model, make_optimizer("adam", model, 1e-3)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return train_run(*fresh(), dataset(), out_dir=out, **SETTINGS), out


def test_max_steps_ends_the_run_in_the_middle_of_an_epoch(straight):
    run, out = straight
    assert run.step == 17
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert run.history[-1]["batches"] == 3 and "batches" not in run.history[0]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "completed" and record["steps_done"] == 17


def test_a_run_without_validation_records_that_its_results_are_the_last_epochs(straight):
    _, out = straight
    record = json.loads((out / "metrics.json").read_text())
    assert record["results_of"] == {"file": "model.npz", "epoch": 3}


def test_the_step_curves_hold_the_logged_steps_and_every_evaluation(straight):
    run, _ = straight
    assert [step for step, _ in run.curves["train"]] == [4, 8, 12, 16]
    # Every eval_every steps, and at each epoch's end (steps 7, 14 and the last, 17).
    assert [row[0] for row in run.curves["test"]] == [5, 7, 10, 14, 15, 17]
    assert all(0 <= accuracy <= 1 and loss > 0 for _, loss, accuracy in run.curves["test"])
    assert run.curves["test"][-1][2] == run.history[-1]["test_accuracy"]


def test_a_run_with_step_curves_draws_them_in_steps_png(straight, tmp_path):
    _, out = straight
    assert (out / "steps.png").is_file(), sorted(path.name for path in out.iterdir())
    settings = {**SETTINGS, "log_every": None, "eval_every": None}
    plain = train_run(*fresh(), dataset(), out_dir=tmp_path, **settings)
    assert not (plain.out / "steps.png").exists(), "a run without step curves drew steps.png"


def test_a_training_curve_point_is_the_mean_loss_of_its_window(tmp_path):
    # With log_every 1 each point is one step's mean loss; the epoch's mean of those equals its train loss.
    run = train_run(*fresh(), dataset(), **{**SETTINGS, "max_steps": 7, "log_every": 1, "eval_every": None})
    losses = [loss for _, loss in run.curves["train"]]
    sizes = [32] * 6 + [200 - 6 * 32]
    mean = sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / 200
    assert mean == pytest.approx(run.history[0]["train_loss"], rel=1e-12)


def test_a_run_stopped_mid_window_resumes_to_the_same_weights_history_and_curves(straight, tmp_path):
    straight_run, _ = straight
    with pytest.raises(TrainingInterrupted):
        train_run(*fresh(), dataset(), out_dir=tmp_path, stop=StopAtStep(10), **SETTINGS)
    stopped = load_checkpoint(tmp_path / "model.npz").meta
    assert stopped["step"] == 10 and stopped["partial"]["window_count"] == 2 * 32  # steps 9 and 10
    run = train_run(*fresh(), dataset(), out_dir=tmp_path, resume=True, **SETTINGS)
    assert run.curves == straight_run.curves
    drop = [{k: v for k, v in row.items() if k != "seconds"} for row in run.history]
    assert drop == [{k: v for k, v in row.items() if k != "seconds"} for row in straight_run.history]
    for key, value in straight_run.model.state_dict().items():
        assert np.array_equal(value, run.model.state_dict()[key]), key


def test_resuming_a_run_that_took_its_steps_asks_for_more(straight):
    _, out = straight
    with pytest.raises(ConfigError, match="already took its 17 steps"):
        train_run(*fresh(), dataset(), out_dir=out, resume=True, **SETTINGS)
    more = train_run(*fresh(), dataset(), out_dir=out, resume=True, **{**SETTINGS, "max_steps": 20})
    assert more.step == 20


@pytest.mark.parametrize("key", ["max_steps", "log_every", "eval_every"])
@pytest.mark.parametrize("value", [0, -3, 2.5, "7"])
def test_step_settings_must_be_whole_numbers_of_at_least_one(key, value):
    with pytest.raises(ConfigError, match=key):
        RunConfig(**{key: value})


def test_cnnx_train_takes_the_step_options_and_resume_extends_max_steps(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "mlp",
        "--data-dir",
        str(data),
        "--batch-size",
        "32",
        "--quiet",
        "--epochs",
        "9",
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--max-steps", "8", "--eval-every", "4",
                                      "--log-every", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["steps_done"] == 8 and [row[0] for row in record["curves"]["test"]] == [4, 5, 8]
    again = CliRunner().invoke(cli, ["train", "--resume", str(out), "--quiet"])
    assert again.exit_code == 1 and "already took its 8 steps: pass --max-steps N with N > 8" in again.output
    more = CliRunner().invoke(cli, ["train", "--resume", str(out), "--max-steps", "12", "--quiet"])
    assert more.exit_code == 0, more.output
    assert json.loads((out / "metrics.json").read_text())["steps_done"] == 12


def test_a_run_cut_inside_its_first_epoch_ends_saying_how_many_steps_it_took(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")  # 160 training images: 10 batches of 16
    args = ["train", "--model", "mlp", "--data-dir", str(data), "--batch-size", "16", "--max-steps", "5",
            "--out", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert " after 5 steps (5 of 10 batches of epoch 1); outputs in " in last, last


@pytest.mark.parametrize(
    "rows, steps, expected",
    [
        ([{"epoch": 1}], 7, "1 epoch"),
        ([{"epoch": 1}, {"epoch": 2}], 14, "2 epochs"),
        ([{"epoch": 1}, {"epoch": 2}, {"epoch": 3, "batches": 3}], 17,
         "17 steps (2 epochs and 3 of 7 batches of epoch 3)"),
        ([{"epoch": 1}, {"epoch": 2, "batches": 1}], 8, "8 steps (1 epoch and 1 of 7 batches of epoch 2)"),
    ],
)  # fmt: skip
def test_the_length_of_a_run_is_said_in_epochs_or_in_steps_when_it_ends_inside_one(rows, steps, expected):
    from cnnx.training.progress import trained_length

    assert trained_length(rows, steps, 7) == expected

"""RunConfig and run_training: one validated description of a run, from Python, TOML or the command line;
what a resumed run may change; run directories that parallel runs never share."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.training import RunConfig, TrainingInterrupted, resume_config, run_training
from cnnx.training.rundir import METRICS, claim_run_dir

from helpers import StopAtStep, blobs, write_blob_idx


def blob_dataset() -> Dataset:
    return Dataset(*blobs(160, seed=1), *blobs(40, seed=2), source="synthetic blobs")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- RunConfig ---------------------------------------------------------------------------------------


def test_the_defaults_are_the_reports_cnn_with_adam_for_five_epochs():
    config = RunConfig()
    assert (config.model, config.optimizer, config.epochs, config.batch_size, config.device) == (
        "seed", "adam", 5, 128, "cpu"
    )  # fmt: skip


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"epochs": 0}, "epochs must be a whole number from 1"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"model": "vgg99"}, "model must be a preset (seed, mlp, "),
        ({"model": [{"type": "Nope", "config": {}}]}, "model: layer 0 has an unknown type 'Nope'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, momentum, adam"),
        ({"optimizer_options": {"beta": 0.5}}, "adam has no setting 'beta'"),
        ({"optimizer_options": {"beta1": "high"}}, "beta1 must be a finite number"),
        ({"device": "tpu"}, "device must be one of cpu, gpu, auto"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
        ({"limit": 0}, "limit must be a whole number >= 1"),
        ({"on_divergence": "ignore"}, "on_divergence must be one of stop, skip"),
        ({"lrr": 0.1}, "unknown key 'lrr'"),
    ],
)
def test_a_bad_field_is_a_one_line_error_naming_it(values, fragment):
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_dict(values, source="run.toml")
    message = str(refused.value)
    assert message.startswith("run.toml: ") and fragment in message and "\n" not in message, message


def test_a_toml_file_gives_the_fields_and_command_line_values_win(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\nepochs = 7\nlr = 0.01\ndata_dir = "data"\n'
                 '[optimizer_options]\nbeta1 = 0.8\n')  # fmt: skip
    config = RunConfig.from_file(path, overrides={"epochs": 2})
    assert (config.model, config.epochs, config.lr, config.optimizer_options) == (
        "mlp",
        2,
        0.01,
        {"beta1": 0.8},
    )
    assert config.data_dir == str(tmp_path / "data"), "a relative data_dir is relative to the file"


def test_a_toml_file_may_describe_its_own_architecture(tmp_path):
    text = '[[model]]\ntype = "Flatten"\nconfig = {}\n\n[[model]]\ntype = "Dense"\n'
    text += "config = {in_features = 784, out_features = 10}\n"
    config = RunConfig.from_file(write(tmp_path / "run.toml", text))
    dense = {"type": "Dense", "config": {"in_features": 784, "out_features": 10}}
    assert config.model == [{"type": "Flatten", "config": {}}, dense]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("epochs = 0\n", "run.toml: epochs must be"),
        ("epoch = 3\n", "run.toml: unknown key 'epoch'"),
        ("epochs = \n", "run.toml: not valid TOML"),
    ],
)
def test_a_bad_toml_file_is_one_line_naming_the_file_and_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_file(write(tmp_path / "run.toml", text))


# -- the command line over it -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_idx(tmp_path_factory.mktemp("blobs"))


def test_cnnx_train_config_trains_what_the_file_says_and_options_override_it(data_dir, tmp_path):
    path = write(
        tmp_path / "run.toml",
        f'model = "mlp"\nepochs = 3\nbatch_size = 40\nseed = 4\ndata_dir = "{data_dir}"\n',
    )
    result = CliRunner().invoke(
        cli, ["train", "--config", str(path), "--epochs", "1", "--out", str(tmp_path / "r"), "-q"]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "r" / METRICS).read_text())["config"]
    assert (recorded["model"], recorded["epochs"], recorded["batch_size"], recorded["seed"]) == (
        "mlp",
        1,
        40,
        4,
    )


def test_cnnx_train_with_a_bad_config_file_is_one_line_and_writes_nothing(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\nbatch = 40\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and f"{path}: unknown key 'batch'" in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_config_and_resume_together_are_refused(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--config cannot be combined with --resume" in result.output


# -- resuming: what identifies a run and what may change ------------------------------------------------


@pytest.fixture
def stopped(tmp_path):
    config = RunConfig(model="mlp", epochs=3, batch_size=32, seed=2)
    with pytest.raises(TrainingInterrupted):
        run_training(config, tmp_path / "run", dataset=blob_dataset(), stop=StopAtStep(7), progress="none")
    return config, tmp_path / "run"


def test_a_resumed_run_takes_a_new_learning_rate_and_records_it(stopped):
    _, out = stopped
    config = resume_config(out, {"lr": 5e-4, "epochs": 4})
    assert (config.lr, config.epochs, config.model, config.batch_size) == (5e-4, 4, "mlp", 32)
    run = run_training(config, out, resume=True, dataset=blob_dataset(), progress="none")
    assert run.optimizer.lr == 5e-4 and len(run.history) == 4
    assert json.loads((out / METRICS).read_text())["config"]["lr"] == 5e-4


def test_resuming_with_the_same_settings_is_bit_identical_to_never_stopping(stopped, tmp_path):
    config, out = stopped
    straight = run_training(config, tmp_path / "straight", dataset=blob_dataset(), progress="none")
    resumed = run_training(resume_config(out), out, resume=True, dataset=blob_dataset(), progress="none")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"batch_size": 64}, "--batch-size 64 contradicts"),
        ({"seed": 3}, "--seed 3 contradicts"),
        ({"model": "seed"}, "--model 'seed' contradicts"),
        ({"optimizer_options": {"beta1": 0.5}}, "--optimizer-options"),
        ({"out": "elsewhere"}, "--out cannot be combined"),
    ],
)
def test_resuming_with_another_identity_is_refused(stopped, given, fragment):
    _, out = stopped
    with pytest.raises(ConfigError, match=fragment):
        resume_config(out, given)


# -- run directories ---------------------------------------------------------------------------------


def _claim(base: str) -> str:
    return str(claim_run_dir(base, unique=True).path)


def test_runs_started_at_the_same_moment_in_parallel_processes_get_directories_of_their_own(tmp_path):
    base = str(tmp_path / "runs" / "20261130-120000-seed-adam")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.map(_claim, [base] * 8)
    assert len(set(claimed)) == 8, f"shared directories: {sorted(claimed)}"
    assert all((Path(path) / METRICS).exists() for path in claimed)


def test_an_explicit_run_directory_that_another_run_claimed_is_refused(tmp_path):
    claim_run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match="is not empty"):
        claim_run_dir(tmp_path / "run")

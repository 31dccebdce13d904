"""The life of a run directory through ``cnnx train``: a reader that closes the output early stops the
printing, not the work; a model that is not a classifier of the data set's images, and a run file
nested too deep or not a file, are one line and leave no run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cnnx.cli import cli

from helpers import write_blob_idx

FAST = ["--model", "mlp", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The four official IDX file names holding 160 training and 40 test blob images."""
    return write_blob_idx(tmp_path_factory.mktemp("fashion"), train=160, test=40)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A completed `cnnx train` run: its directory (tests only read it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run("train", *FAST, "--data-dir", data_dir, "--out", out, "-q")
    assert result.exit_code == 0, f"the run failed: {result.output}"
    return out


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def status_of(out) -> str:
    return json.loads((out / "metrics.json").read_text())["status"]


def assert_one_line_error(result, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, f"exit code {result.exit_code}, expected 1; stderr: {result.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("cnnx: error: "), f"stderr is not one error line: {lines}"
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# -- a reader that goes away ------------------------------------------------------------------------------


def into_a_closed_pipe(*args) -> subprocess.CompletedProcess:
    """`python -m cnnx ARGS` with its standard output a pipe that nobody reads (`| head -0`)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        command = [sys.executable, "-m", "cnnx", *map(str, args)]
        return subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)


def test_train_into_a_closed_pipe_completes_its_run_and_exits_0(data_dir, tmp_path):
    out = tmp_path / "run"
    done = into_a_closed_pipe("train", *FAST, "--data-dir", data_dir, "--out", out)
    assert (done.returncode, done.stderr) == (0, ""), f"exit {done.returncode}, stderr {done.stderr!r}"
    assert status_of(out) == "completed" and (out / "model.npz").is_file(), f"status {status_of(out)}"


def test_evaluate_into_a_closed_pipe_exits_0_without_an_error(data_dir, trained):
    done = into_a_closed_pipe("evaluate", trained / "model.npz", "--data-dir", data_dir)
    assert (done.returncode, done.stderr) == (0, ""), f"exit {done.returncode}, stderr {done.stderr!r}"


# -- models that are not classifiers of the data, run files that are not run files ---------------------------

MODELS = {
    "conv-last": (
        '[[model]]\ntype = "Conv2D"\nconfig = { in_channels = 1, out_channels = 10, kernel_size = 3 }\n',
        "its output per sample is (10, 26, 26) (after its last layer, Conv2D), not a vector of class scores",
    ),
    "one-output": (
        '[[model]]\ntype = "Flatten"\nconfig = {}\n'
        '[[model]]\ntype = "Dense"\nconfig = { in_features = 784, out_features = 1 }\n',
        "its output per sample is (1,) (after its last layer, Dense), not a vector of at least 2",
    ),
    "other-images": (
        'model = "seed"\ninput_shape = [3, 32, 32]\n',
        "input_shape [3, 32, 32] does not fit the data set's samples, 1 x 28 x 28",
    ),
}


@pytest.mark.parametrize("toml, fragment", MODELS.values(), ids=MODELS.keys())
def test_a_model_that_cannot_classify_the_data_is_one_line_and_leaves_no_run_directory(
    toml, fragment, data_dir, tmp_path
):
    (tmp_path / "run.toml").write_text("epochs = 1\n" + toml)
    result = run(
        "train", "--config", tmp_path / "run.toml", "--data-dir", data_dir, "--out", tmp_path / "run"
    )
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists(), f"it left {sorted((tmp_path / 'run').iterdir())}"


@pytest.mark.parametrize("nested", ["[" * 500 + "]" * 500, "{ a = " * 500 + "1" + " }" * 500])
def test_a_run_file_nested_500_deep_is_one_line(nested, tmp_path):
    (tmp_path / "deep.toml").write_text(f"lr = {nested}\n")
    assert_one_line_error(run("train", "--config", tmp_path / "deep.toml"), "nested too deeply")


def test_a_fifo_given_as_the_run_file_is_one_line_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "run.toml")
    command = [sys.executable, "-m", "cnnx", "train", "--config", str(tmp_path / "run.toml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)  # a hang fails, not waits
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "FIFO" in lines[0], f"{done.returncode}: {lines}"

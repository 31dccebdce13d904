"""The life of a run directory through ``cnnx train``, with real processes: a SIGKILL after the last
checkpoint or before the first leaves a run that ``--resume`` finishes or starts again; a second writer
is one line; a reader that closes the output early stops the printing, not the work; a model that is
not a classifier of the data set's images, and a run file nested too deep or not a file, are one line
and leave no run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.training import RunConfig, run_training
from cnnx.training.rundir import FIGURES

from helpers import write_blob_idx

FAST = ["--model", "mlp", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The four official IDX file names holding 160 training and 40 test blob images."""
    return write_blob_idx(tmp_path_factory.mktemp("fashion"), train=160, test=40)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A completed `cnnx train` run: its directory (tests only read it, or are refused writing it)."""
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


# -- killed -----------------------------------------------------------------------------------------------

KILLER = """
import importlib, os, signal, sys

def die(*args, **kwargs):  # a figure half written, then the SIGKILL
    open(os.path.join({out!r}, ".samples.png.k1ll3d.tmp"), "wb").write(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

setattr(importlib.import_module({module!r}), {name!r}, die)
from cnnx.cli import main
sys.argv = ["cnnx", "train", *{args!r}]
main()
"""


def killed_run(out, data_dir, module: str, name: str) -> None:
    """`cnnx train` in a process of its own, SIGKILLed by itself when it first calls ``module.name``."""
    args = [*FAST, "--data-dir", str(data_dir), "--out", str(out), "-q"]
    code = textwrap.dedent(KILLER).format(out=str(out), module=module, name=name, args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, f"the run was not killed: exit {done.returncode}, {done.stderr}"


def test_resume_finishes_a_run_killed_while_drawing_its_figures(data_dir, tmp_path):
    out = tmp_path / "run"
    killed_run(out, data_dir, "cnnx.training.fit", "write_plots")
    result = run("train", "--resume", out, "--data-dir", data_dir)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert f"finishing {out}" in result.stdout, f"it does not say it finishes the run: {result.stdout!r}"
    missing = [name for name in FIGURES if not (out / name).is_file()]
    strays = sorted(path.name for path in out.glob(".*.tmp"))
    assert (status_of(out), missing, strays) == ("completed", [], []), (
        f"{status_of(out)}, {missing}, {strays}"
    )


@pytest.fixture
def dead_claim(data_dir, tmp_path):
    """The directory of a `cnnx train` run killed before its first checkpoint (in this process: the
    run stops in its first step, and nothing records it)."""
    out = tmp_path / "run"
    config = RunConfig(model="mlp", epochs=2, batch_size=32, data_dir=str(data_dir))
    with pytest.raises(Killed):
        run_training(config, out, progress="none", on_start=kill)
    assert status_of(out) == "running" and not (out / "model.npz").exists(), "not a dead claim"
    return out


class Killed(BaseException):
    """What a SIGKILL does to a run, inside one process: it stops where it is, and nothing records it."""


def kill(*args, **kwargs):
    raise Killed


def test_train_starts_again_in_the_directory_of_a_run_killed_before_its_first_checkpoint(
    data_dir, dead_claim
):
    result = run("train", *FAST, "--data-dir", data_dir, "--out", dead_claim, "-q")
    assert (result.exit_code, status_of(dead_claim)) == (0, "completed"), (
        f"exit {result.exit_code}: {result.output}"
    )


def test_resume_starts_a_run_killed_before_its_first_checkpoint_again_with_its_settings(data_dir, dead_claim):
    result = run("train", "--resume", dead_claim, "--data-dir", data_dir)
    record = json.loads((dead_claim / "metrics.json").read_text())
    got = (result.exit_code, record["status"], record["config"]["model"], len(record["history"]))
    assert got == (0, "completed", "mlp", 2), f"(exit, status, model, epochs) {got}: {result.output}"
    assert "again from scratch" in result.stdout, f"it does not say it starts again: {result.stdout!r}"


# -- one writer at a time ---------------------------------------------------------------------------------

HOLDER = """
import sys
from cnnx.training.rundir import lock_run_dir
lock = lock_run_dir({out!r})
print("locked", flush=True)
sys.stdin.read()
"""


def test_resuming_a_run_another_process_writes_is_one_line_naming_it(data_dir, trained):
    out = trained
    code = textwrap.dedent(HOLDER).format(out=str(out))
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n", "the holder did not take the lock"
        result = run("train", "--resume", out, "--epochs", "3", "--data-dir", data_dir)
    finally:
        holder.kill()
        holder.communicate()
    assert_one_line_error(
        result, f"run directory {out} is being written by another process (pid {holder.pid})"
    )


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

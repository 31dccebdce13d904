"""The command line, through click's CliRunner on a small synthetic dataset written as IDX files."""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cnnx.backends import available_backends
from cnnx.cli import cli
from cnnx.data import CLASS_NAMES, load_fashion_mnist, write_idx
from cnnx.io import load_model
from cnnx.io.checkpoint import load_checkpoint
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit
from cnnx.training.rundir import LOCK

from helpers import blobs, write_blob_idx

RUN_FILES = ("metrics.json", "model.npz", "curves.png", "confusion_matrix.png", "samples.png")
FAST = ["--model", "mlp", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The four official IDX file names holding 160 training and 40 test blob images."""
    directory = tmp_path_factory.mktemp("fashion")
    write_blob_idx(directory, train=160, test=40)
    return directory


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A run directory from `cnnx train` on the blobs, and the CliRunner result that made it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(cli, ["train", *FAST, "--data-dir", str(data_dir), "--out", str(out)])
    return out, result


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, f"exit code {result.exit_code}, expected 1; stderr: {result.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("cnnx: error: "), f"stderr is not one error line: {lines}"
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_train_succeeds_and_reports_the_test_accuracy(trained):
    _, result = trained
    assert result.exit_code == 0, f"exit code {result.exit_code}: {result.output}"
    assert "test accuracy" in result.stdout, f"no final accuracy line in: {result.stdout!r}"


def test_train_writes_every_run_output(trained):
    out, _ = trained
    missing = [name for name in RUN_FILES if not (out / name).is_file()]
    assert not missing, f"run directory lacks {missing}"


def test_train_records_the_command_line_options_in_metrics_json(trained, data_dir):
    out, _ = trained
    config = json.loads((out / "metrics.json").read_text())["config"]
    got = {k: config[k] for k in ("model", "epochs", "batch_size", "seed", "device", "dtype", "limit", "lr")}
    expected = {"model": "mlp", "epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu", "dtype": "float32",
                "limit": None, "lr": 1e-3}  # fmt: skip
    assert got == expected, f"recorded {got}, expected {expected}"


def test_train_refuses_a_non_empty_out_directory(trained, data_dir):
    out, _ = trained
    result = run("train", *FAST, "--data-dir", str(data_dir), "--out", str(out))
    assert_one_line_error(result, "not empty")


def test_quiet_train_prints_nothing(data_dir, tmp_path):
    result = run("train", *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "q"), "--quiet")
    assert result.exit_code == 0 and result.output == "", f"exit {result.exit_code}, output {result.output!r}"


def test_a_diverging_run_ends_with_one_error_line(data_dir, tmp_path):
    args = ["--optimizer", "sgd", "--lr", "1e30", "--data-dir", str(data_dir), "--out", str(tmp_path / "d")]
    result = run("train", *FAST, *args, "-q")
    assert_one_line_error(result, "diverged")


def test_gpu_request_without_cuda_names_the_reason(data_dir, tmp_path):
    if available_backends()["gpu"] is None:
        pytest.skip("a usable GPU is present, so --device gpu succeeds here")
    result = run("train", "--device", "gpu", "--data-dir", str(data_dir), "--out", str(tmp_path / "g"))
    assert_one_line_error(result, "GPU backend unavailable")


def test_gpu_request_without_cuda_creates_no_run_directory(data_dir, tmp_path):
    if available_backends()["gpu"] is None:
        pytest.skip("a usable GPU is present, so --device gpu succeeds here")
    run("train", "--device", "gpu", "--data-dir", str(data_dir), "--out", str(tmp_path / "g"))
    assert not (tmp_path / "g").exists(), "a failed GPU request left a run directory behind"


@pytest.mark.parametrize(
    "option, value",
    [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "0"), ("--lr", "-1e-3"), ("--lr", "nan"),
     ("--lr", "inf"), ("--limit", "0"), ("--device", "tpu"), ("--model", "vgg99"), ("--dtype", "float16")],
)  # fmt: skip
def test_a_bad_option_is_a_usage_error(option, value):
    result = run("train", option, value)
    assert result.exit_code == 2, f"{option} {value}: exit code {result.exit_code}, expected 2"
    assert option in result.stderr, f"the usage error does not name {option}: {result.stderr!r}"


def test_a_missing_dataset_directory_is_a_one_line_error(tmp_path):
    result = run("train", *FAST, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "nowhere")


def test_evaluate_prints_accuracy_confusion_matrix_and_report(trained, data_dir):
    out, _ = trained
    result = run("evaluate", str(out / "model.npz"), "--data-dir", str(data_dir))
    recorded = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert result.exit_code == 0, f"exit code {result.exit_code}: {result.output}"
    assert f"accuracy {recorded:.4f}" in result.stdout, f"accuracy {recorded:.4f} not in {result.stdout!r}"
    assert "confusion matrix" in result.stdout and "precision" in result.stdout, result.stdout
    assert all(name in result.stdout for name in CLASS_NAMES), "a class name is missing from the report"


def test_evaluate_of_a_missing_model_is_a_one_line_error(tmp_path):
    assert_one_line_error(run("evaluate", str(tmp_path / "none.npz")), "no such model file")


def test_predict_lists_the_top_k_classes_of_each_image(trained, tmp_path):
    out, _ = trained
    images, _ = blobs(3, seed=9)
    write_idx(tmp_path / "three-idx3-ubyte", images)
    result = run("predict", str(out / "model.npz"), str(tmp_path / "three-idx3-ubyte"), "--top", "2")
    lines = result.stdout.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == 3, f"exit {result.exit_code}, lines {lines}"
    for line in lines:
        probabilities = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ", 1)[1].split(", ")]
        assert len(probabilities) == 2 and probabilities[0] >= probabilities[1], f"not the top 2: {line!r}"


def test_predict_of_an_unreadable_file_is_a_one_line_error(trained, tmp_path):
    out, _ = trained
    (tmp_path / "notes.txt").write_text("not an image")
    assert_one_line_error(run("predict", str(out / "model.npz"), str(tmp_path / "notes.txt")), "notes.txt")


def test_info_reports_versions_backends_and_the_dataset(data_dir):
    result = run("info", "--data-dir", str(data_dir))
    assert result.exit_code == 0, f"exit code {result.exit_code}: {result.output}"
    for fragment in ("numpy", "cupy", "python", "cpu: usable", "gpu:", str(data_dir)):
        assert fragment in result.stdout, f"{fragment!r} missing from cnnx info: {result.stdout!r}"


def test_python_dash_m_cnnx_prints_one_error_line_and_no_traceback(tmp_path):
    command = [sys.executable, "-m", "cnnx", "evaluate", str(tmp_path / "none.npz")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, f"exit code {done.returncode}: {done.stderr}"
    assert lines and lines[0].startswith("cnnx: error:") and len(lines) == 1, f"stderr: {done.stderr!r}"


# -- resume, interruption, resources ---------------------------------------------------------------

SLOW = ["--model", "mlp", "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "1", "-q"]


@pytest.fixture(scope="module")
def big_data_dir(tmp_path_factory):
    """480 training images: 60 steps of 8 an epoch, each followed by a checkpoint (--checkpoint-every 1),
    so an epoch lasts long enough for a signal to land in its middle."""
    return write_blob_idx(tmp_path_factory.mktemp("fashion480"), train=480, test=40)


def start_training(data_dir, out) -> subprocess.Popen:
    """`python -m cnnx train` in a subprocess, returned once its first checkpoint exists."""
    command = [sys.executable, "-m", "cnnx", "train", *SLOW, "--data-dir", str(data_dir), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "model.npz").exists():
        assert process.poll() is None, f"training ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.002)
    return process


def assert_resumable(out) -> dict:
    """The run directory's checkpoint loads as a model and as a checkpoint; returns its meta."""
    load_model(out / "model.npz")
    meta = load_checkpoint(out / "model.npz").meta
    return meta


@pytest.fixture(scope="module")
def interrupted(big_data_dir, tmp_path_factory):
    """A run stopped by SIGINT in its first epoch: (run dir, exit code, stderr)."""
    out = tmp_path_factory.mktemp("sigint") / "run"
    process = start_training(big_data_dir, out)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    return out, process.returncode, stderr


def test_sigint_exits_130_with_a_checkpoint_in_the_middle_of_the_epoch(interrupted):
    out, code, _ = interrupted
    meta = assert_resumable(out)
    where = (code, meta["epoch"], 0 < meta["batch"] < 60)
    assert where == (130, 0, True), f"(exit, epochs done, mid-epoch) {where}; batch {meta['batch']}"


def test_sigint_prints_how_to_resume_and_records_the_interruption(interrupted):
    out, _, stderr = interrupted
    status = json.loads((out / "metrics.json").read_text())["status"]
    assert f"cnnx train --resume {out}" in stderr and status == "interrupted", f"{status}; stderr {stderr!r}"


def test_a_run_resumed_after_sigint_ends_as_the_uninterrupted_run_does(interrupted, big_data_dir):
    out, _, _ = interrupted
    # Checkpoints change nothing in the numbers: the resumed run writes them rarely, to be quick.
    resumed = run("train", "--resume", str(out), "--checkpoint-every", "1000", "-q")
    assert resumed.exit_code == 0, f"exit {resumed.exit_code}: {resumed.output}"
    model = build_model("mlp", seed=0)  # the uninterrupted run, as cnnx train would do it, in Python
    history = fit(model, make_optimizer("adam", model), load_fashion_mnist(big_data_dir), epochs=2,
                  batch_size=8, seed=0, progress="none")  # fmt: skip
    a, b = load_model(out / "model.npz").state_dict(), model.state_dict()
    gap = max(float(abs(a[k] - b[k]).max()) for k in a)
    rows = [[{k: v for k, v in row.items() if k != "seconds"} for row in rows]
            for rows in (json.loads((out / "metrics.json").read_text())["history"], history)]  # fmt: skip
    assert gap == 0.0 and rows[0] == rows[1], f"weights differ by {gap:.3e}; histories {rows}"


def test_sigterm_exits_143_and_leaves_a_loadable_checkpoint(big_data_dir, tmp_path):
    process = start_training(big_data_dir, tmp_path / "run")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, f"exit {process.returncode}: {stderr}"
    assert_resumable(tmp_path / "run")


def test_a_second_sigint_exits_130_and_the_last_checkpoint_still_loads(big_data_dir, tmp_path):
    process = start_training(big_data_dir, tmp_path / "run")
    process.send_signal(signal.SIGINT)
    time.sleep(0.001)  # two separate deliveries, not one merged pending signal
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, f"exit {process.returncode}: {stderr}"
    assert_resumable(tmp_path / "run")


def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(big_data_dir, tmp_path):
    out, rng = tmp_path / "run", random.Random(6)
    for attempt in range(3):
        if attempt == 0:
            process = start_training(big_data_dir, out)
        else:  # kill the resumed run too
            command = [sys.executable, "-m", "cnnx", "train", "--resume", str(out), "-q"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(0.6)
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        process.communicate(timeout=60)
        assert_resumable(out)
        strays = [p.name for p in out.iterdir() if p.name not in (*RUN_FILES, LOCK)]
        assert all(p.startswith(".") and p.endswith(".tmp") for p in strays), f"unexpected files {strays}"
    meta = load_checkpoint(out / "model.npz").meta
    if (meta["epoch"], meta["batch"]) != (2, 0):  # a resumed run may have finished before its kill landed
        result = run("train", "--resume", str(out), "--checkpoint-every", "1000", "-q")
        assert result.exit_code == 0, result.output
        assert not list(out.glob(".*.tmp")), f"strays left after the run finished: {list(out.iterdir())}"
    assert load_checkpoint(out / "model.npz").meta["epoch"] == 2


def test_resume_with_a_contradicting_option_is_a_one_line_error(trained):
    out, _ = trained
    assert_one_line_error(
        run("train", "--resume", str(out), "--batch-size", "64", "--epochs", "3"),
        "--batch-size 64 contradicts",
    )


def test_resuming_a_completed_run_without_more_epochs_is_a_one_line_error(trained):
    out, _ = trained
    assert_one_line_error(run("train", "--resume", str(out)), "already completed its 2 epochs")


def test_resume_and_out_together_are_a_one_line_error(trained, tmp_path):
    out, _ = trained
    assert_one_line_error(
        run("train", "--resume", str(out), "--out", str(tmp_path)), "--out cannot be combined"
    )


def test_a_batch_size_larger_than_the_training_set_is_a_one_line_error(data_dir, tmp_path):
    args = [
        "--model",
        "mlp",
        "--batch-size",
        "500",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "b"),
    ]
    assert_one_line_error(run("train", *args), "batch size 500 is larger than the training set (160 images)")
    assert not (tmp_path / "b").exists(), "a refused run left its directory"


def test_checkpoint_every_zero_is_a_usage_error():
    result = run("train", "--checkpoint-every", "0")
    assert result.exit_code == 2 and "--checkpoint-every" in result.stderr, (
        f"{result.exit_code} {result.stderr}"
    )


def test_no_free_space_is_a_one_line_error_and_creates_no_run_directory(data_dir, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    result = run("train", *FAST, "--data-dir", str(data_dir), "--out", str(tmp_path / "full"))
    assert_one_line_error(result, "not enough free space")
    assert not (tmp_path / "full").exists(), "a refused run left its directory"

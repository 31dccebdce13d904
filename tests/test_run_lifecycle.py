"""The life of a run directory, through Python: one writer at a time (a lock the operating system drops
with its process); a run killed after its last checkpoint is finished by resuming it; one killed before
its first can be started again in place; a run whose first write fails leaves nothing behind; a closed
output stream stops the printing, never the training."""

from __future__ import annotations

import errno
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnnx.training.loop as loop_module
import cnnx.training.runfiles as runfiles_module
from cnnx.data import Dataset
from cnnx.errors import ConfigError, ResourceError, RunLockedError
from cnnx.io.checkpoint import load_checkpoint
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit, train_run
from cnnx.training.rundir import FIGURES, lock_run_dir

from helpers import blobs

SETTINGS = {"epochs": 2, "batch_size": 32, "seed": 0, "progress": "none"}  # 200 images: 7 batches an epoch
TESTS = Path(__file__).resolve().parent
fit_module = importlib.import_module("cnnx.training.fit")  # the package's `fit` names the function


def blob_dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


def mlp_and_adam():
    model = build_model("mlp", seed=0)
    return model, make_optimizer("adam", model, 1e-3)


def status_of(out) -> str:
    return json.loads((out / "metrics.json").read_text())["status"]


class Killed(BaseException):
    """What a SIGKILL does to a run, inside one process: it stops where it is, and nothing records it."""


def kill(*args, **kwargs):
    raise Killed


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run that nobody stopped: its directory."""
    out = tmp_path_factory.mktemp("straight")
    fit(*mlp_and_adam(), blob_dataset(), out_dir=out, **SETTINGS)
    return out


# -- a run killed after its last checkpoint -------------------------------------------------------------

ENDS = {"epochs": {}, "max-steps": {"epochs": 3, "max_steps": 10}}  # 10 steps: 3 batches into epoch 2


def killed_while_drawing(out, monkeypatch, **settings):
    """A run killed while it drew its figures, after its last checkpoint: a figure half written."""
    monkeypatch.setattr(fit_module, "write_plots", kill)
    monkeypatch.setattr(fit_module.Run, "finish", lambda run, *args, **kwargs: None)  # a kill records nothing
    with pytest.raises(Killed):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=out, **{**SETTINGS, **settings})
    (out / ".samples.png.k1ll3d.tmp").write_bytes(b"\x89PNG half")
    monkeypatch.undo()


@pytest.mark.parametrize("end", ENDS.values(), ids=ENDS.keys())
def test_resuming_a_run_killed_while_drawing_its_figures_finishes_it(end, tmp_path, monkeypatch):
    killed_while_drawing(tmp_path, monkeypatch, **end)
    assert status_of(tmp_path) == "running", "the simulated kill was recorded, so it was no kill"
    fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, resume=True, **{**SETTINGS, **end})
    missing = [name for name in FIGURES if not (tmp_path / name).is_file()]
    strays = sorted(path.name for path in tmp_path.glob(".*.tmp"))
    assert (status_of(tmp_path), missing, strays) == ("completed", [], []), (
        f"after the resume: status {status_of(tmp_path)}, figures missing {missing}, temporaries {strays}"
    )


def test_a_figure_that_cannot_be_written_fails_the_run_and_resuming_finishes_it(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fit_module, "write_plots", full_disk)
    with pytest.raises(ResourceError, match="No space left on device"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **SETTINGS)
    assert status_of(tmp_path) == "failed", "a run whose figures failed stayed recorded as running"
    monkeypatch.undo()
    fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, resume=True, **SETTINGS)
    assert status_of(tmp_path) == "completed"


def test_finishing_a_killed_run_trains_no_further(tmp_path, monkeypatch):
    killed_while_drawing(tmp_path, monkeypatch)
    monkeypatch.setattr(loop_module, "train_step", lambda *args, **kwargs: pytest.fail("it trained again"))
    model, optimizer = mlp_and_adam()
    run = train_run(model, optimizer, blob_dataset(), out_dir=tmp_path, resume=True, **SETTINGS)
    assert (run.begun, optimizer.steps) == ("finishing", 14), f"{run.begun}, {optimizer.steps} Adam steps"


def test_a_finished_run_records_the_results_of_the_run_that_was_never_killed(straight, tmp_path, monkeypatch):
    killed_while_drawing(tmp_path, monkeypatch)
    fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, resume=True, **SETTINGS)
    keys = ("test_accuracy", "confusion_matrix", "per_class", "epochs_completed")
    mine, theirs = (json.loads((out / "metrics.json").read_text()) for out in (tmp_path, straight))
    differ = [key for key in keys if mine.get(key) != theirs.get(key)]
    assert not differ, f"the finished run's {differ} differ from the uninterrupted run's"


# -- a run killed before its first checkpoint ------------------------------------------------------------


def die_in_step(exc_type):
    def step(*args, **kwargs):
        raise exc_type

    return step


DEATHS = {
    "killed": ("on_start", kill, "running"),
    "failed": ("train_step", die_in_step(RuntimeError), "failed"),
    "interrupted": ("train_step", die_in_step(KeyboardInterrupt), "interrupted"),
}


@pytest.fixture(params=DEATHS.values(), ids=DEATHS.keys())
def dead_claim(request, tmp_path, monkeypatch):
    """A run directory whose run died in its first step, before any checkpoint: the directory."""
    where, death, status = request.param
    out = tmp_path / "run"
    if where == "on_start":
        with pytest.raises(Killed):
            fit(*mlp_and_adam(), blob_dataset(), out_dir=out, on_start=death, **SETTINGS)
    else:
        monkeypatch.setattr(loop_module, where, death)
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            fit(*mlp_and_adam(), blob_dataset(), out_dir=out, **SETTINGS)
        monkeypatch.undo()
    assert status_of(out) == status and not (out / "model.npz").exists(), "not the dead claim meant"
    return out


def test_a_dead_runs_directory_can_be_started_again_in_place(dead_claim):
    fit(*mlp_and_adam(), blob_dataset(), out_dir=dead_claim, **SETTINGS)
    assert status_of(dead_claim) == "completed", f"status {status_of(dead_claim)} after starting again"


def test_resuming_a_dead_run_starts_it_from_scratch(dead_claim, straight):
    model, _ = mlp_and_adam()
    fit(model, make_optimizer("adam", model, 1e-3), blob_dataset(), out_dir=dead_claim, resume=True,
        **SETTINGS)  # fmt: skip
    a, b = model.state_dict(), load_checkpoint(straight / "model.npz").model_state
    gap = max(float(np.abs(a[key] - b[key]).max()) for key in a)
    assert gap == 0.0, f"the restarted run's weights differ from a fresh run's by {gap:.3e}"


def test_a_dead_runs_directory_holding_other_files_is_still_refused(dead_claim):
    (dead_claim / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=dead_claim, **SETTINGS)


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_run_whose_first_write_fails_removes_the_directories_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(runfiles_module, "write_json", full_disk)
    with pytest.raises(ResourceError, match="No space left on device"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path / "a" / "b" / "run", **SETTINGS)
    assert list(tmp_path.iterdir()) == [], f"left behind: {sorted(tmp_path.rglob('*'))}"


def test_a_run_whose_first_write_fails_leaves_a_given_empty_directory_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(runfiles_module, "write_json", full_disk)
    with pytest.raises(ResourceError):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **SETTINGS)
    assert list(tmp_path.iterdir()) == [], f"the empty directory now holds {sorted(tmp_path.iterdir())}"


# -- one writer at a time --------------------------------------------------------------------------------

HOLDER = """
import sys
sys.path.insert(0, {tests!r})
import cnnx.training.loop as loop
from cnnx.data import Dataset
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit
from helpers import blobs

real, steps = loop.train_step, [0]

def step(*args, **kwargs):
    steps[0] += 1
    if steps[0] == {wait_at}:  # a live run, in the middle of its work: it waits here until killed
        print("waiting", flush=True)
        sys.stdin.read()
    return real(*args, **kwargs)

loop.train_step = step
model = build_model("mlp", seed=0)
data = Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")
fit(model, make_optimizer("adam", model, 1e-3), data, epochs=2, batch_size=32, progress="none",
    out_dir={out!r}, checkpoint_every={every})
"""


@pytest.fixture
def live_run(tmp_path):
    """``start(wait_at, every)`` runs a training in another process, with a checkpoint every ``every``
    steps, and returns (run dir, process) once it stands still in step ``wait_at``, holding its run."""
    out = tmp_path / "run"

    def start(wait_at: int, every: int | None):
        code = textwrap.dedent(HOLDER).format(tests=str(TESTS), out=str(out), wait_at=wait_at, every=every)
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        process = subprocess.Popen([sys.executable, "-c", code], text=True, **pipes)
        started.append(process)
        assert process.stdout.readline() == "waiting\n", f"the run did not start: {process.communicate()}"
        return out, process

    started = []
    yield start
    for process in started:
        process.kill()
        process.communicate()


def test_resuming_a_live_run_is_refused_with_one_line_naming_its_process(live_run):
    out, process = live_run(wait_at=4, every=2)  # a checkpoint at step 2
    in_flight = out / ".model.npz.inflight.tmp"  # what the live run is writing
    in_flight.write_bytes(b"PK half")
    with pytest.raises(RunLockedError) as refused:
        fit(*mlp_and_adam(), blob_dataset(), out_dir=out, resume=True, **SETTINGS)
    message = str(refused.value)
    assert str(out) in message and f"pid {process.pid}" in message and "\n" not in message, message
    assert in_flight.exists(), "the refused resume deleted the live run's temporary file"


def test_starting_over_a_live_run_before_its_first_checkpoint_is_refused(live_run):
    out, _ = live_run(wait_at=1, every=None)
    for resume in (False, True):
        with pytest.raises(RunLockedError, match="being written by another process"):
            fit(*mlp_and_adam(), blob_dataset(), out_dir=out, resume=resume, **SETTINGS)
    assert status_of(out) == "running", "the live run's record was overwritten"


def test_a_killed_runs_lock_is_free_for_the_next_writer(live_run):
    out, process = live_run(wait_at=4, every=2)
    process.kill()
    process.communicate()
    fit(*mlp_and_adam(), blob_dataset(), out_dir=out, resume=True, **SETTINGS)
    assert status_of(out) == "completed", f"status {status_of(out)} after resuming the killed run"


def test_a_finished_run_lets_go_of_its_lock(tmp_path):
    fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **SETTINGS)
    lock_run_dir(tmp_path).release()  # raises RunLockedError if this process still held it


# -- a closed output ---------------------------------------------------------------------------------------


def test_a_closed_output_stops_the_progress_lines_not_the_training(tmp_path, monkeypatch):
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: every write to the pipe fails with EPIPE
    with os.fdopen(writer, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **{**SETTINGS, "progress": "lines"})
        monkeypatch.undo()
    assert status_of(tmp_path) == "completed", f"status {status_of(tmp_path)}"

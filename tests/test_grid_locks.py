"""Grids that share a results folder go by the run-directory locks: a run another process holds is that
process's (never trained twice at once, never swapped out or deleted under it), a run whose worker died
before its first checkpoint starts again in its own directory, and a swap cut short by a killed grid is
finished by the next one. The grids here are real processes; their workers are fakes that keep the lock
as the real worker does (an flock on RUN/.cnnx-lock; exit 4 when another process holds it) and log each
training they start and end, so that each case costs a second or two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnx.errors import RunLockedError
from cnnx.experiments import find_experiments, plan, run_grid, select
from cnnx.experiments.store import promote
from cnnx.training.rundir import lock_run_dir

from helpers import TINY_STUDY

WAIT_SECONDS = 60  # a bound on every wait below, never a measure: each should take a fraction of it

# The fake worker: "complete" writes a completed record at once; "wait" first writes a running record
# and waits until the test opens LAB/gate; "die" writes a running record and dies of SIGKILL before any
# checkpoint. It refuses a run that finished already, as the real worker's claim does.
WORKER = r"""
import fcntl, json, os, signal, sys, time
from pathlib import Path

task, mode, lab = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
work = Path(task["run_dir"])
work.mkdir(parents=True, exist_ok=True)
lock = os.open(work / ".cnnx-lock", os.O_RDWR | os.O_CREAT, 0o666)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(4)
metrics = work / "metrics.json"
if metrics.is_file() and json.loads(metrics.read_text())["status"] in ("completed", "diverged"):
    print(f"error: run directory {work} is not empty", file=sys.stderr)
    sys.exit(1)

def log(event):
    with open(lab / "trainings.log", "a") as handle:
        handle.write(f"{event} {work} {os.getpid()}\n")

def write(record):
    tmp = work / f".metrics.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, metrics)

log("start")
record = {"format": "cnnx-run", "status": "running", "config": task["config"], "steps_done": 0}
write(record)
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "wait":
    (lab / f"waiting-{os.getpid()}").write_text(str(work))
    deadline = time.monotonic() + 60
    while not (lab / "gate").exists():
        if time.monotonic() > deadline:
            print("error: the test never opened the gate", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.02)
log("end")
record.update(status="completed", test_accuracy=0.75, steps_done=12, trained_by=os.getpid(),
              history=[{"epoch": 1, "test_accuracy": 0.75, "seconds": 1.0}])
write(record)
"""

# A grid in a process of its own, with the fake worker. With PAUSE = N it stops after its Nth rename (a
# swap of a finished replacement into place) until the test opens LAB/swap-gate, or kills it there.
GRID = r"""
import json, os, sys, time
from pathlib import Path
from cnnx.experiments import find_experiments, grid, select

folder, results, mode, lab, force, pause, protocols = sys.argv[1:8]
grid.worker_command = lambda task: [sys.executable, str(Path(lab) / "worker.py"), json.dumps(task), mode, lab]
if pause != "none":
    rename, renames = os.rename, []

    def rename_then_pause(source, destination):
        rename(source, destination)
        renames.append(destination)
        if len(renames) == int(pause):
            Path(lab, "swap-paused").touch()
            deadline = time.monotonic() + 60
            while not Path(lab, "swap-gate").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    os.rename = rename_then_pause
specs = select(find_experiments(folder), [], protocols.split(","))
summaries = grid.run_grid(specs, results, jobs=2, force=force == "force", echo=lambda line: None)
print(json.dumps(summaries))
"""


class Lab:
    """A study of one experiment (two runs), its results folder, and grids on it in processes of their
    own; ``path`` holds the fake worker, its log and the files the test opens its gates with."""

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "lab"
        self.path.mkdir()
        (self.path / "worker.py").write_text(WORKER)
        (self.path / "grid.py").write_text(GRID)
        self.folder, self.results = tmp_path / "experiments", tmp_path / "results"
        self.folder.mkdir()
        study = TINY_STUDY.format(name="tiny", data=tmp_path / "data")  # the fakes read no data
        (self.folder / "tiny.toml").write_text(study)
        self.processes: list[subprocess.Popen] = []

    def specs(self, protocols=("report", "modern")):
        return select(find_experiments(self.folder), [], list(protocols))

    def final(self, spec) -> Path:
        return self.results / spec.experiment / f"{spec.protocol}-{spec.label}"

    def grid(self, mode: str, force=False, pause=None, protocols=("report", "modern")) -> subprocess.Popen:
        args = [self.folder, self.results, mode, self.path, "force" if force else "-", pause or "none",
                ",".join(protocols)]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, str(self.path / "grid.py"), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def wait_until(self, condition, what: str) -> None:
        """Wait until ``condition()``; past the bound, the test fails saying what it waited for."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            crashed = [p for p in self.processes if p.poll() is not None and p.returncode != 0]
            if crashed or time.monotonic() > deadline:
                pytest.fail(f"waited in vain for {what}: {self.stop()}")
            time.sleep(0.02)

    def summaries(self, process: subprocess.Popen) -> dict[str, str]:
        """The grid's summaries when it ends: run key -> status."""
        out, err = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 0, f"the grid failed: {err}"
        return {s["key"]: s["status"] for s in json.loads(out.splitlines()[-1])}

    def waiting(self) -> list[str]:
        """The directories in which a fake worker waits (or waited) for the gate."""
        return sorted(p.read_text() for p in self.path.glob("waiting-*"))

    def trainings(self) -> list[tuple[str, str]]:
        """(event, directory) for each training started or ended, in order."""
        log = self.path / "trainings.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [tuple(line.split()[:2]) for line in lines]

    def open(self, gate: str) -> None:
        (self.path / gate).touch()

    def stop(self) -> str:
        """Open the gates and end every grid still running; returns what each printed on stderr."""
        self.open("gate")
        self.open("swap-gate")
        said = []
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            _, err = process.communicate()
            said.append(f"grid {process.pid} (exit {process.returncode}): {(err or '').strip()}")
        return "; ".join(said)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.stop()


def completed_run(directory: Path, config: dict, marker: str = "old") -> None:
    """A completed run's record in ``directory``, with ``marker`` to recognise it by."""
    directory.mkdir(parents=True)
    record = {
        "format": "cnnx-run",
        "status": "completed",
        "test_accuracy": 0.5,
        "config": config,
        "marker": marker,
    }
    (directory / "metrics.json").write_text(json.dumps(record))


def leftovers(lab: Lab) -> list[str]:
    """What the experiment's folder holds besides its runs' directories: staging or old directories."""
    folder = lab.results / "tiny"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".staging", ".old")))


# -- two grids on one results folder ------------------------------------------------------------------------


@pytest.mark.parametrize("replacing", [False, True], ids=["new-runs", "forced-replacements"])
def test_a_second_grid_reports_the_runs_a_live_grid_trains_as_running_there_and_trains_none_of_them(
    lab, replacing
):
    specs = lab.specs()
    if replacing:
        for spec in specs:
            completed_run(lab.final(spec), spec.config.to_dict())
    first = lab.grid("wait", force=replacing)
    lab.wait_until(lambda: len(lab.waiting()) == 2, "the first grid's two runs to begin")
    second = lab.grid("wait", force=replacing)
    lab.wait_until(lambda: second.poll() is not None or len(lab.waiting()) > 2, "the second grid to end")
    lab.open("gate")
    second_says, first_says = lab.summaries(second), lab.summaries(first)
    assert set(second_says.values()) == {"busy"}, (
        f"the second grid did not leave the runs alone: {second_says}"
    )
    assert set(first_says.values()) == {"completed"}, f"the first grid's runs did not end well: {first_says}"
    starts = [directory for event, directory in lab.trainings() if event == "start"]
    assert len(starts) == 2, f"a run was trained twice: {starts}"
    assert leftovers(lab) == [], f"left beside the runs: {leftovers(lab)}"


def test_a_grid_leaves_a_swap_in_progress_in_another_process_alone(lab):
    [spec] = specs = lab.specs(("report",))
    final = lab.final(spec)
    completed_run(final, spec.config.to_dict())
    swapping = lab.grid("complete", force=True, pause=1, protocols=("report",))
    lab.wait_until(lambda: (lab.path / "swap-paused").exists(), "the grid to begin its swap")
    [task] = plan(specs, lab.results)
    assert task["action"] == "busy", f"a grid took up a run another grid is swapping: {task['action']}"
    lab.open("swap-gate")
    assert lab.summaries(swapping) == {spec.key: "completed"}, "the swap did not end well"
    assert "trained_by" in json.loads((final / "metrics.json").read_text()), "the replacement is not in place"


@pytest.mark.parametrize("renames", [1, 2], ids=["old-moved-away", "new-moved-in"])
def test_a_swap_cut_short_by_a_killed_grid_is_finished_by_the_next_grid(lab, renames):
    [spec] = specs = lab.specs(("report",))
    final = lab.final(spec)
    completed_run(final, spec.config.to_dict())
    swapping = lab.grid("complete", force=True, pause=renames, protocols=("report",))
    lab.wait_until(lambda: (lab.path / "swap-paused").exists(), "the grid to begin its swap")
    swapping.send_signal(signal.SIGKILL)
    swapping.communicate()
    [task] = plan(specs, lab.results)
    assert task["action"] == "reuse", f"the next grid does not see the finished replacement: {task['action']}"
    assert "trained_by" in json.loads((final / "metrics.json").read_text()), "the replacement is not in place"
    assert leftovers(lab) == [], f"left beside the run: {leftovers(lab)}"


# -- a run whose worker died before its first checkpoint ----------------------------------------------------


def test_a_run_whose_worker_died_before_its_first_checkpoint_starts_again_in_its_own_directory(
    lab, monkeypatch
):
    mode = ["die"]
    monkeypatch.setattr(
        "cnnx.experiments.grid.worker_command",
        lambda task: [sys.executable, str(lab.path / "worker.py"), json.dumps(task), mode[0], str(lab.path)],
    )
    [spec] = specs = lab.specs(("report",))
    [died] = run_grid(specs, lab.results, echo=lambda line: None)
    assert died["status"] == "killed"
    mode[0] = "complete"
    [again] = run_grid(specs, lab.results, echo=lambda line: None)
    assert again["status"] == "completed"
    starts = [directory for event, directory in lab.trainings() if event == "start"]
    assert starts == [str(lab.final(spec))] * 2, f"the run did not start again in its directory: {starts}"
    assert leftovers(lab) == []


# -- one process swaps nothing another holds ----------------------------------------------------------------


def test_promote_refuses_to_swap_out_a_run_directory_another_writer_holds(tmp_path):
    final, staging = tmp_path / "report-12-steps", tmp_path / "report-12-steps.staging"
    completed_run(final, {}, "old")
    completed_run(staging, {}, "new")
    holder = lock_run_dir(final)  # another open of the lock file: flock tells it from promote's own
    try:
        with pytest.raises(RunLockedError):
            promote(staging, final)
    finally:
        holder.release()
    assert json.loads((final / "metrics.json").read_text())["marker"] == "old", "the held run was swapped out"
    assert staging.is_dir(), "the finished replacement was lost"


def test_a_forced_grid_starts_no_worker_for_a_run_another_process_holds(lab, monkeypatch):
    started = []
    monkeypatch.setattr("cnnx.experiments.grid.worker_command", lambda task: started.append(task) or ["true"])
    [spec] = specs = lab.specs(("report",))
    completed_run(lab.final(spec), spec.config.to_dict())
    holder = lock_run_dir(lab.final(spec))
    try:
        [summary] = run_grid(specs, lab.results, force=True, echo=lambda line: None)
    finally:
        holder.release()
    assert (summary["status"], started) == ("busy", []), f"{summary['status']}, workers started: {started}"
    assert leftovers(lab) == []


def test_a_grid_empties_no_replacement_another_process_took_up_after_it_planned(lab, monkeypatch):
    import cnnx.experiments.grid as grid

    started, holders = [], []
    monkeypatch.setattr(grid, "worker_command", lambda task: started.append(task) or ["true"])
    [spec] = specs = lab.specs(("report",))
    completed_run(lab.final(spec), spec.config.to_dict())
    staging = lab.final(spec).with_name(lab.final(spec).name + ".staging")

    def plan_then_taken_up(*args, **options):
        tasks = plan(*args, **options)  # a replacement to start in staging, which another grid then begins
        staging.mkdir()
        (staging / "model.npz").write_bytes(b"a checkpoint")
        holders.append(lock_run_dir(staging))
        return tasks

    monkeypatch.setattr(grid, "plan", plan_then_taken_up)
    try:
        [summary] = run_grid(specs, lab.results, force=True, echo=lambda line: None)
    finally:
        for holder in holders:
            holder.release()
    assert (staging / "model.npz").is_file(), "the replacement another process writes was emptied"
    assert (summary["status"], started) == ("busy", []), f"{summary['status']}, workers started: {started}"


# -- output into a closed pipe -------------------------------------------------------------------------------


def test_experiment_run_into_a_closed_pipe_runs_its_grid_and_says_why_a_run_failed(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "tiny.toml").write_text(TINY_STUDY.format(name="tiny", data=tmp_path / "nonexistent"))
    reader, writer = os.pipe()
    os.close(reader)  # `| head -0`: nobody reads
    try:
        command = [sys.executable, "-m", "cnnx", "experiment", "run", "--all", "--protocol", "report",
                   "--dir", str(folder), "--results", str(tmp_path / "results")]  # fmt: skip
        done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)
    assert done.returncode == 1, f"exit status {done.returncode}, stderr {done.stderr!r}"
    assert done.stderr.startswith("cnnx: error: 1 of 1 runs failed: tiny/report-12-steps: --data-dir"), (
        done.stderr
    )

"""Run a grid of experiment runs: each in a process of its own (:mod:`cnnx.experiments.worker`), several at
once through joblib, on this machine or on a Dask cluster.

- A run writes to ``<results>/<experiment>/<protocol>-<label>``, a directory every worker can reach.
- A finished run (completed, or diverged: that is a result too) with the same settings is reused
  unless ``force``; a run that stopped early (a killed worker, a failure) is resumed from its last
  checkpoint, or started again when it has none.
- Locally, ``jobs`` runs go at once, longest first, and each gets ``cores // jobs`` threads (BLAS and
  cnnx's pool), so they do not oversubscribe the cores. With ``cluster``, joblib's Dask backend sends
  the runs to the scheduler at that address; each Dask worker runs one run at a time per thread it
  offers.
- While the grid runs, one line per change of state says how far each run has come.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cnnx.errors import ConfigError
from cnnx.training import RunConfig

from .spec import RunSpec

WAITING, RUNNING = "waiting", "running"
FINAL = ("completed", "diverged")  # a run in one of these states is a result, reused unless forced
POLL_SECONDS = 10.0
CONNECT_SECONDS = 30  # how long to wait for a Dask scheduler
# Settings that may differ from a finished run's record without making it another run: where it ran,
# and the epochs the worker derives from max_steps.
NOT_COMPARED = ("device", "data_dir", "checkpoint_every")


def run_dir(results, spec: RunSpec) -> Path:
    return Path(results) / spec.experiment / f"{spec.protocol}-{spec.label}"


def read_metrics(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def same_settings(spec: RunSpec, recorded: dict) -> bool:
    """Whether a run's recorded config is the config ``spec`` asks for (ignoring where it ran)."""
    wanted, defaults = spec.config.to_dict(), RunConfig().to_dict()
    ignored = set(NOT_COMPARED) | ({"epochs"} if spec.config.max_steps is not None else set())
    for key, value in wanted.items():
        if key in ignored:
            continue
        have = recorded.get(key, defaults[key])  # a setting newer than the record had its default then
        if key == "input_shape" and isinstance(have, list):
            have = tuple(have)
        if key == "lr" and value is None:  # the optimizer's default was recorded as a number
            continue
        if have != value:
            return False
    return True


def plan(specs: list[RunSpec], results, force: bool = False) -> list[dict]:
    """What to do with each run: reuse, resume or start (``action``), with its directory."""
    tasks = []
    for spec in specs:
        directory = run_dir(results, spec)
        record = read_metrics(directory)
        action = "start"
        if record is not None and not force and same_settings(spec, record.get("config", {})):
            if record.get("status") in FINAL:
                action = "reuse"
            elif (directory / "model.npz").is_file():
                action = "resume"
        tasks.append({"spec": spec, "dir": directory, "action": action, "record": record})
    return tasks


def execute(task: dict) -> dict:
    """Run one task's worker process and wait for it (what joblib calls, here or on a Dask worker).
    Returns the run's key, directory, status and, when it finished, its test accuracy and time."""
    command = worker_command(task)
    env = dict(os.environ)
    if task.get("threads"):
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(task["threads"])
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    summary = {"key": task["key"], "dir": task["run_dir"], "seconds": time.monotonic() - started}
    record = read_metrics(Path(task["run_dir"])) or {}
    status = record.get("status", "failed")
    if done.returncode < 0:  # killed by a signal: the checkpoint stays for the next run of the grid
        status = "killed"
        summary["error"] = (
            f"the worker was killed by signal {-done.returncode}; running the grid again resumes it"
        )
    elif done.returncode != 0 and status not in FINAL:
        status = "failed"
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        summary["error"] = lines[-1] if lines else f"the worker exited with status {done.returncode}"
    summary["status"] = status
    summary["test_accuracy"] = record.get("test_accuracy")
    summary["steps"] = record.get("steps_done")
    return summary


def worker_command(task: dict) -> list[str]:
    payload = {k: task[k] for k in ("config", "run_dir", "resume", "threads")}
    return [sys.executable, "-m", "cnnx.experiments.worker", json.dumps(payload)]


def _task_payload(task: dict, threads: int | None) -> dict:
    spec = task["spec"]
    config = spec.config.to_dict()
    return {"key": spec.key, "config": config, "run_dir": str(task["dir"]),
            "resume": task["action"] == "resume", "threads": threads}  # fmt: skip


def run_grid(
    specs: list[RunSpec],
    results,
    *,
    jobs: int = 1,
    cluster: str | None = None,
    force: bool = False,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    poll_seconds: float = POLL_SECONDS,
) -> list[dict]:
    """Run ``specs`` (see the module's description); returns one summary per run, in ``specs`` order."""
    from joblib import Parallel, delayed, parallel_config

    if jobs < 1:
        raise ConfigError(f"jobs must be a whole number >= 1, got {jobs}")
    tasks = plan(specs, results, force)
    summaries = {}
    for task in tasks:
        if task["action"] == "reuse":
            record = task["record"]
            key = task["spec"].key
            summaries[key] = {"key": key, "dir": str(task["dir"]), "status": record["status"],
                              "test_accuracy": record.get("test_accuracy"), "steps": record.get("steps_done"),
                              "reused": True}  # fmt: skip
        elif task["action"] == "start" and task["dir"].exists():
            shutil.rmtree(task["dir"])  # forced, changed settings, or a run that left no checkpoint
    # Longest first: a long run started last would leave the other cores idle at the end.
    todo = sorted((t for t in tasks if t["action"] != "reuse"), key=lambda t: -_estimated_steps(t["spec"]))
    reused = len(tasks) - len(todo)
    echo(f"{len(tasks)} runs: {reused} reused, {sum(t['action'] == 'resume' for t in todo)} to resume, "
         f"{sum(t['action'] == 'start' for t in todo)} to start"
         + (f" on the Dask cluster at {cluster}" if cluster else f", {jobs} at a time"))  # fmt: skip
    if todo:
        if threads is None and not cluster:
            threads = max(1, (os.cpu_count() or 1) // min(jobs, len(todo)))
        payloads = [_task_payload(t, threads) for t in todo]
        watcher = _Watcher(todo, echo, poll_seconds)
        watcher.start()
        try:
            if cluster:
                client = _dask_client(cluster)
                try:
                    with parallel_config(backend="dask"):
                        results_iter = Parallel(n_jobs=-1, return_as="generator_unordered")(
                            delayed(execute)(p) for p in payloads
                        )
                        for summary in results_iter:
                            summaries[summary["key"]] = summary
                            watcher.finished(summary)
                finally:
                    client.close()
            else:
                # Threads only wait on the worker processes: each run is a process of its own.
                runner = Parallel(
                    n_jobs=min(jobs, len(todo)), prefer="threads", return_as="generator_unordered"
                )
                for summary in runner(delayed(execute)(p) for p in payloads):
                    summaries[summary["key"]] = summary
                    watcher.finished(summary)
        finally:
            watcher.stop()
    return [summaries[spec.key] for spec in specs]


def _estimated_steps(spec: RunSpec) -> int:
    """About how many steps a run takes: its max_steps, or its epochs over the training set (60,000
    images unless limited)."""
    config = spec.config
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * -(-(config.limit or 60_000) // config.batch_size)


def _dask_client(address: str):
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("--cluster needs Dask: pip install 'cnnx[cluster]'") from None
    try:
        return Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({' '.join(str(exc).split())})"
        ) from None


class _Watcher:
    """Prints a line when a run finishes, and, every ``poll_seconds`` while runs go on, one line with how
    far each running run has come (read from its metrics.json) when that changed."""

    def __init__(self, tasks: list[dict], echo, poll_seconds: float):
        self.tasks = {t["spec"].key: t for t in tasks}
        self.echo, self.poll_seconds = echo, poll_seconds
        self.done: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="cnnx-grid-progress")
        self.last = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()

    def finished(self, summary: dict) -> None:
        with self.lock:
            self.done[summary["key"]] = summary
            n = len(self.done)
        accuracy = summary.get("test_accuracy")
        text = f"[{n}/{len(self.tasks)}] {summary['key']}: {summary['status']}"
        if accuracy is not None:
            text += f", test accuracy {accuracy:.4f}"
        text += f", {summary['seconds']:.0f} s"
        if summary.get("error"):
            text += f" ({summary['error']})"
        self.echo(text)

    def _loop(self) -> None:
        while not self.halt.wait(self.poll_seconds):
            line = self.progress_line()
            if line != self.last:
                self.last = line
                self.echo(line)

    def progress_line(self) -> str:
        with self.lock:
            done = set(self.done)
        running, waiting = [], 0
        for key, task in self.tasks.items():
            if key in done:
                continue
            record = read_metrics(task["dir"])
            if record is None or record.get("status") != RUNNING:
                waiting += 1
                continue
            config, spec = record.get("config", {}), task["spec"]
            if spec.config.max_steps is not None:
                where = f"step {record.get('steps_done', 0)}/{spec.config.max_steps}"
            else:
                where = f"epoch {record.get('epochs_completed', 0) + 1}/{config.get('epochs', '?')}"
            running.append(f"{key} {where}")
        parts = [f"{len(done)}/{len(self.tasks)} done"]
        if running:
            parts.append("running: " + ", ".join(running))
        if waiting:
            parts.append(f"{waiting} {WAITING}")
        return "progress: " + "; ".join(parts)

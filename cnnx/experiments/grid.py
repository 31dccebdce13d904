"""Run a grid of experiment runs: each in a process of its own (:mod:`cnnx.experiments.worker`), several at
once through joblib, on this machine or on a Dask cluster.

- A run writes to its directory under the results (:mod:`.store`), a folder every worker can reach;
  trials on a subset (``limit``) have a folder of their own, apart from the full runs.
- A finished run (completed, or diverged: that is a result too) with the same settings is reused
  unless ``force``; a run that stopped early (a killed worker) is resumed from its last checkpoint,
  and one that died before its first checkpoint (a dead claim) starts again in its directory. Any
  other run already in the directory (forced, made with other settings, a damaged record) is replaced
  by a run trained beside it, which takes its place only once it finished: nothing already there is
  deleted before its replacement exists.
- A run whose directory, or replacement beside it, another process holds (the lock of
  :mod:`cnnx.training.rundir`: a live run, another grid's worker or swap) is that process's: the grid
  starts no worker for it and reports it as running there. Grids that share a results folder never
  train one run twice at once, and never move or empty a directory a live process writes.
- With ``cluster``, the scheduler is reached before anything on disk is touched.
- Locally, ``jobs`` runs go at once, longest first, and each gets ``cores // jobs`` threads (BLAS and
  cnnx's pool), so they do not oversubscribe the cores. With ``cluster``, joblib's Dask backend sends
  the runs to the scheduler at that address; each Dask worker runs one run at a time per thread it
  offers.
- While the grid runs, one line per change of state says how far each run has come.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cnnx.errors import ConfigError, ResourceError, RunLockedError
from cnnx.training import RunConfig
from cnnx.training.config import upgrade_settings
from cnnx.training.rundir import CHECKPOINT, check_unlocked, is_dead_claim

from .records import FINAL, RunRecord, read_metrics
from .spec import RunSpec
from .store import clear_unfinished, promote, run_dir, settle, staging_dir
from .watch import BUSY, BUSY_TEXT, Watcher
from .worker import LOCKED

KILLED, FAILED = "killed", "failed"  # how a run of this grid ended without a result (or BUSY)
POLL_SECONDS = 10.0
CONNECT_SECONDS = 30  # how long to wait for a Dask scheduler
# Settings that may differ from a finished run's record without making it another run: where it ran,
# and the epochs the worker derives from max_steps.
NOT_COMPARED = ("device", "data_dir", "checkpoint_every")

__all__ = ["execute", "plan", "read_metrics", "run_dir", "run_grid", "same_settings", "worker_command"]


def same_settings(spec: RunSpec, recorded: dict) -> bool:
    """Whether a run's recorded config is the config ``spec`` asks for (ignoring where it ran). A record
    of an older cnnx is read as today's RunConfig would take it (:func:`upgrade_settings`)."""
    recorded = upgrade_settings(recorded)
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


def _current(spec: RunSpec, record: RunRecord | None) -> bool:
    return record is not None and not record.damaged and same_settings(spec, record.config)


def _resumable(spec: RunSpec, directory: Path, record: RunRecord | None) -> bool:
    return _current(spec, record) and not record.finished and (directory / CHECKPOINT).is_file()


def _occupied(directory: Path) -> bool:
    return os.path.lexists(directory) and (not directory.is_dir() or any(directory.iterdir()))


def _held(*directories: Path) -> bool:
    """Whether a live process holds the lock of one of ``directories`` (asked, never taken)."""
    for directory in directories:
        try:
            check_unlocked(directory)
        except RunLockedError:
            return True
    return False


def _replacing(spec: RunSpec, record: RunRecord | None, force: bool) -> str:
    """Why the run in a directory is replaced, in a few words."""
    if record is None:
        return "holds files but no run record"
    if record.damaged:
        return record.describe()
    if not same_settings(spec, record.config):
        return "was recorded with other settings"
    return "forced" if force and record.finished else f"{record.status}, with no checkpoint to resume from"


def plan(specs: list[RunSpec], results, force: bool = False) -> list[dict]:
    """What to do with each run (``action``: reuse, resume, start, or busy when another process holds
    it), its directory (``dir``), the one its worker writes (``work``: the same, or the staging
    directory beside it when it replaces the run there) and why it replaces that run (``replaces``,
    None when it does not)."""
    return [_plan_one(spec, run_dir(results, spec), force) for spec in specs]


def _plan_one(spec: RunSpec, final: Path, force: bool) -> dict:
    staging = staging_dir(final)
    task = {"spec": spec, "dir": final, "work": final, "action": "start", "record": None, "replaces": None}
    try:
        settle(final)
    except RunLockedError:  # another grid is changing places there now
        return {**task, "action": BUSY}
    record = task["record"] = read_metrics(final)
    if _current(spec, record) and record.finished and not force:
        task["action"] = "reuse"
    elif _held(final, staging):
        task["action"] = BUSY
    elif _resumable(spec, final, record):
        task["action"] = "resume"
    elif _resumable(spec, staging, read_metrics(staging)):
        task.update(action="resume", work=staging, replaces=_replacing(spec, record, force))
    elif is_dead_claim(final):  # its worker died before the first checkpoint: nothing to keep
        pass
    elif _occupied(final):
        task.update(work=staging, replaces=_replacing(spec, record, force))
    return task


def execute(task: dict) -> dict:
    """Run one task's worker process and wait for it (what joblib calls, here or on a Dask worker), then
    put a finished replacement in its place. Returns the run's key, directory, status (a record's, or
    killed, failed, busy) and, when it finished, its test accuracy and steps; ``error`` says why not."""
    work = Path(task["run_dir"])
    final = Path(task.get("final_dir", work))
    started = time.monotonic()
    summary = {"key": task["key"], "dir": str(final)}
    earlier = read_metrics(final) if task["resume"] and work == final else None
    if earlier is not None and earlier.finished:  # another grid finished it since this one looked
        return _finished(summary, earlier, started, reused=True)
    try:  # a replacement that never finished is emptied under its lock: never one a live process writes
        fresh = task["resume"] or work == final or clear_unfinished(work)
    except RunLockedError:
        return _ended(summary, started, BUSY)
    except ResourceError as exc:
        return _ended(summary, started, FAILED, str(exc))
    if not fresh:  # another grid has just trained the replacement
        return _put_in_place(summary, work, final, started)
    done = _run_worker(task)
    record = read_metrics(work)
    if done.returncode == LOCKED:  # another process writes this run: its result is its own
        if record is not None and record.finished and work == final:  # and it has just finished it
            return _finished(summary, record, started, reused=True)
        return _ended(summary, started, BUSY)
    if record is not None and record.finished and work != final:
        return _put_in_place(summary, work, final, started)
    if record is not None and record.finished:
        return _finished(summary, record, started)
    if done.returncode < 0:  # killed by a signal: the checkpoint stays for the next run of the grid
        error = f"the worker was killed by signal {-done.returncode}; running the grid again resumes it"
        return _ended(summary, started, KILLED, error)
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    error = lines[-1].removeprefix("error: ") if lines else f"the worker exited with status {done.returncode}"
    return _ended(summary, started, FAILED, error)


def _run_worker(task: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if task.get("threads"):
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(task["threads"])
    return subprocess.run(worker_command(task), env=env, capture_output=True, text=True, check=False)


def _put_in_place(summary: dict, work: Path, final: Path, started: float) -> dict:
    """Swap the finished replacement in ``work`` into ``final``; the run there is then the result (also
    when another grid swapped it in first). Busy while another process holds one of them."""
    try:
        promote(work, final)
    except RunLockedError:  # the replacement stays finished beside it, for the next grid to swap in
        return _ended(summary, started, BUSY)
    except ResourceError as exc:
        return _ended(summary, started, FAILED, str(exc))
    record = read_metrics(final)
    if record is None or not record.finished:
        return _ended(summary, started, FAILED, f"the finished run in {work} is gone, and {final} holds none")
    return _finished(summary, record, started)


def _ended(summary: dict, started: float, status: str, error: str | None = None) -> dict:
    """The summary of a run that gave no result (killed, failed, busy), with why."""
    return {**summary, "status": status, **({"error": error} if error else {}),
            "seconds": time.monotonic() - started}  # fmt: skip


def _finished(summary: dict, record: RunRecord, started: float, reused: bool = False) -> dict:
    return {**summary, "status": record.status, "test_accuracy": record.test_accuracy, "steps": record.steps,
            "seconds": time.monotonic() - started, **({"reused": True} if reused else {})}  # fmt: skip


def worker_command(task: dict) -> list[str]:
    payload = {k: task[k] for k in ("config", "run_dir", "resume", "threads")}
    return [sys.executable, "-m", "cnnx.experiments.worker", json.dumps(payload)]


def _task_payload(task: dict, threads: int | None) -> dict:
    spec = task["spec"]
    return {"key": spec.key, "config": spec.config.to_dict(), "run_dir": str(task["work"]),
            "final_dir": str(task["dir"]), "resume": task["action"] == "resume",
            "threads": threads}  # fmt: skip


def unfinished(summaries: list[dict]) -> str | None:
    """One line on the runs of a grid that gave no result, by why: failed (with the cause), stopped
    (resumable), or running in another process; None when every run finished."""
    n, parts = len(summaries), []
    failed = [s for s in summaries if s["status"] not in (*FINAL, KILLED, BUSY)]
    if failed:
        causes: dict[str, list[str]] = {}
        for s in failed:
            causes.setdefault(s.get("error") or "no reason given", []).append(s["key"])
        reasons = "; ".join(f"{', '.join(keys)}: {cause}" for cause, keys in causes.items())
        parts.append(f"{len(failed)} of {n} runs failed: {reasons}")
    killed = [s["key"] for s in summaries if s["status"] == KILLED]
    if killed:
        parts.append(f"{len(killed)} of {n} runs were stopped ({', '.join(killed)}): run the same command "
                     "again to resume them")  # fmt: skip
    busy = [s["key"] for s in summaries if s["status"] == BUSY]
    if busy:
        parts.append(f"{len(busy)} of {n} runs are {BUSY_TEXT} ({', '.join(busy)}): once they finish "
                     "there, the next grid and the report use their results")  # fmt: skip
    return "; ".join(parts) or None


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
    if jobs < 1:
        raise ConfigError(f"jobs must be a whole number >= 1, got {jobs}")
    client = _dask_client(cluster) if cluster else None  # before anything on disk is touched
    try:
        tasks = plan(specs, results, force)
        summaries = {t["spec"].key: _reused(t) for t in tasks if t["action"] == "reuse"}
        summaries.update({t["spec"].key: _busy(t) for t in tasks if t["action"] == BUSY})
        todo = _announce(
            tasks, echo, f" on the Dask cluster at {cluster}" if cluster else f", {jobs} at a time"
        )
        if todo:
            if threads is None and not cluster:
                threads = max(1, (os.cpu_count() or 1) // min(jobs, len(todo)))
            summaries.update(_execute_all(todo, threads, jobs, cluster, echo, poll_seconds))
    finally:
        if client is not None:
            client.close()
    return [summaries[spec.key] for spec in specs]


def _reused(task: dict) -> dict:
    record = task["record"]
    return {"key": task["spec"].key, "dir": str(task["dir"]), "status": record.status,
            "test_accuracy": record.test_accuracy, "steps": record.steps, "reused": True}  # fmt: skip


def _busy(task: dict) -> dict:
    return {"key": task["spec"].key, "dir": str(task["dir"]), "status": BUSY}


def _announce(tasks: list[dict], echo, where: str) -> list[dict]:
    """Say what the grid is about to do; returns the tasks to run, longest first (a long run started last
    would leave the other cores idle at the end)."""
    todo = [t for t in tasks if t["action"] not in ("reuse", BUSY)]
    todo.sort(key=lambda t: -_estimated_steps(t["spec"]))
    for task in todo:
        if task["replaces"] is not None and task["replaces"] != "forced":
            echo(f"{task['spec'].key} {task['replaces']}: it stays until a run trained beside it "
                 f"({task['work'].name}) finishes and takes its place")  # fmt: skip
    reused, busy, resume, start = (
        sum(t["action"] == a for t in tasks) for a in ("reuse", BUSY, "resume", "start")
    )
    line = f"{len(tasks)} runs: {reused} reused, " + (f"{busy} {BUSY_TEXT}, " if busy else "")
    line += f"{resume} to resume, {start} to start{where}"
    replacing = sum(t["replaces"] is not None for t in todo)
    if replacing:
        line += f"; {replacing} of them replace the runs in their directories once they finish"
    echo(line)
    return todo


def _execute_all(todo, threads, jobs, cluster, echo, poll_seconds) -> dict:
    from joblib import Parallel, delayed, parallel_config

    payloads = [_task_payload(t, threads) for t in todo]
    summaries = {}
    watcher = Watcher(todo, echo, poll_seconds)
    watcher.start()
    # Locally, threads only wait on the worker processes: each run is a process of its own.
    options = {"n_jobs": -1} if cluster else {"n_jobs": min(jobs, len(todo)), "prefer": "threads"}
    try:
        with parallel_config(backend="dask") if cluster else contextlib.nullcontext():
            runner = Parallel(return_as="generator_unordered", **options)
            for summary in runner(delayed(execute)(p) for p in payloads):
                summaries[summary["key"]] = summary
                watcher.finished(summary)
    finally:
        watcher.stop()
    return summaries


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

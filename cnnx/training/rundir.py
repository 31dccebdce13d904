"""Run directories: checked before the minutes of loading and training (writable, enough space, new,
resumable or a dead run's claim, not locked), then created, locked and claimed by one run; the disk
space a run needs; leftovers of a killed process.

One process at a time writes a run directory: the one that trains or resumes it holds an advisory lock
(``flock``) on the directory's ``.cnnx-lock`` file from before it deletes or writes anything until the
run ends. The operating system drops the lock when the process ends, however it ends, so a killed run
never leaves a stale lock behind; the file itself stays, holding the last holder's process id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np  # host: an item size

from cnnx.errors import ConfigError, ResourceError, RunLockedError
from cnnx.fileio import stale_temporaries

from .names import BEST, CHECKPOINT, FIGURES, LOCK, METRICS, STEPS_FIGURE
from .records import read_record

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): runs go unlocked there
    fcntl = None

PROBE_PREFIX = ".cnnx-probe-"
FIGURES_BYTES = 2 << 20  # three PNGs of a few hundred KiB at most, rounded up
RECORD_BYTES = 1 << 20  # metrics.json, with room for long histories
# The statuses of a run that died before its first checkpoint, whose directory may be started again.
RESTARTABLE = ("running", "failed", "interrupted")
# The files a run writes, each through a temporary file.
WRITTEN = (CHECKPOINT, METRICS, *FIGURES, STEPS_FIGURE, BEST)


def default_run_dir(model_name: str, optimizer_name: str, root="runs") -> Path:
    """``runs/<timestamp>-<model>-<optimizer>``: a name for a new run (:func:`claim_run_dir` adds a
    numeric suffix if another run takes it first)."""
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}-{optimizer_name}"


def check_run_dir(path, *, need_bytes: int = 0, resume: bool = False) -> Path:
    """Check, without creating anything, that a run can be written to ``path``.

    A new run needs ``path`` absent, empty or a dead run's claim (see :func:`is_dead_claim`); a resumed
    one needs its checkpoint there, or a dead claim to start again from scratch. No live process may
    hold the directory's lock (:class:`RunLockedError`). The directory (or, while it does not exist,
    its nearest existing parent) must accept a file (a probe file is written and removed) and hold
    ``need_bytes`` of free space. Raises ConfigError with one line.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory")
    if path.is_dir():
        check_unlocked(path)
    if resume and not (path / CHECKPOINT).is_file() and not is_dead_claim(path):
        raise ConfigError(f"{path} holds no checkpoint ({CHECKPOINT}) to resume from")
    if not resume and path.is_dir() and not _is_empty(path) and not is_dead_claim(path):
        raise ConfigError(
            f"run directory {path} is not empty: choose another --out, remove it, or --resume it"
        )
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot create run directory {path}: {base} is not a directory")
    probe_writable(base)
    check_free_space(base, need_bytes)
    return path


def is_dead_claim(path) -> bool:
    """Whether ``path`` holds only what a run that died before its first checkpoint left behind: its
    ``metrics.json`` with a status in :data:`RESTARTABLE`, the lock file and half-written temporaries,
    and no checkpoint. Such a directory may be started again in place (a live run's directory looks
    the same: its lock tells them apart)."""
    path = Path(path)
    if not path.is_dir() or (path / CHECKPOINT).exists() or not (path / METRICS).is_file():
        return False
    if [entry.name for entry in _results(path)] != [METRICS]:
        return False
    record = read_record(path / METRICS)
    return record is not None and record.get("status") in RESTARTABLE


def _results(path: Path) -> list[Path]:
    """What ``path`` holds besides the lock file, probes and the temporaries of killed writers."""
    leftovers = {tmp for name in WRITTEN for tmp in stale_temporaries(path / name)}
    ours = [entry for entry in path.iterdir() if entry.name == LOCK or entry.name.startswith(PROBE_PREFIX)]
    return [entry for entry in path.iterdir() if entry not in leftovers and entry not in ours]


def _is_empty(path: Path) -> bool:
    return not _results(path)


@dataclasses.dataclass
class RunClaim:
    """A run directory claimed by this process: its ``path``, the ``lock`` held on it, and what claiming
    created (directories and files, outermost first), which :meth:`abandon` removes."""

    path: Path
    lock: RunLock
    created: list[Path]

    def abandon(self) -> None:
        """Remove what claiming created, and only that, then release the lock: for a run whose very
        first write failed, so that nothing of it is left behind."""
        for created in reversed(self.created):
            with contextlib.suppress(OSError):
                created.rmdir() if created.is_dir() else created.unlink()
        self.lock.release()


def claim_run_dir(path, *, need_bytes: int = 0, unique: bool = False) -> RunClaim:
    """Check the run directory with :func:`check_run_dir`, create it (and its parents), lock it and claim
    it for this process by creating its ``metrics.json`` exclusively: two runs started at the same
    moment, in threads or processes, never share a directory. A dead run's claim is taken over in place.
    With ``unique`` (a generated name), a name that is taken, locked or not empty moves on to
    ``<name>-2``, ``<name>-3``, ...; otherwise it is a ConfigError (:class:`RunLockedError` when locked)."""
    base, n = Path(path), 2
    path = base
    while True:
        if unique and path.exists() and (not path.is_dir() or not _is_empty(path)):
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
            continue
        try:
            claim = _claim(check_run_dir(path, need_bytes=need_bytes))
        except ConfigError as exc:
            # Another run took the name between the look above and the check: it holds the lock, or
            # has written its record there. A generated name moves on; any other refusal stands.
            taken = isinstance(exc, RunLockedError) or (path.is_dir() and not _is_empty(path))
            if not (unique and taken):
                raise
            claim = None
        if claim is not None:
            return claim
        if not unique:
            raise ConfigError(f"run directory {path} was just taken by another run")
        path, n = base.with_name(f"{base.name}-{n}"), n + 1


def _claim(path: Path) -> RunClaim | None:
    """Create, lock and claim ``path``; None when another run claimed it first (the lock is then let go,
    and what this call created is removed again)."""
    created = [parent for parent in (path, *path.parents) if not parent.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_run_dir(path)
    except BaseException:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    claim = RunClaim(path, lock, created + ([path / LOCK] if lock.created else []))
    if is_dead_claim(path):  # a run that died before its first checkpoint: start it again in place
        remove_stale_temporaries(path)
        return claim
    try:
        os.close(os.open(path / METRICS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        claim.abandon()
        return None
    claim.created.append(path / METRICS)
    return claim


class RunLock:
    """The advisory lock one process holds on a run directory while it writes it (see the module's
    docstring). ``created``: whether taking it created the lock file. Released by :meth:`release`, or by
    the operating system when the process ends."""

    def __init__(self, handle, created: bool):
        self.handle, self.created = handle, created

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()  # closing the descriptor drops the flock


def lock_run_dir(path) -> RunLock:
    """Take the lock of the run directory ``path`` (which must exist), recording this process's id in
    it. A live process holding it already is a one-line :class:`RunLockedError` naming the directory and
    that process."""
    lock_file, created = Path(path) / LOCK, True
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        fd, created = os.open(lock_file, os.O_RDWR), False
    except OSError as exc:
        raise ResourceError(f"cannot create the lock file {lock_file} ({exc.strerror or exc})") from None
    handle = os.fdopen(fd, "r+b", buffering=0)  # closed (and so unlocked) when collected, at the latest
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
    except BlockingIOError:
        error = _locked(path, handle)
        handle.close()
        raise error from None
    except OSError as exc:
        handle.close()
        raise ResourceError(f"cannot lock {lock_file} ({exc.strerror or exc})") from None
    return RunLock(handle, created)


def check_unlocked(path) -> None:
    """RunLockedError (one line) when a live process holds the lock of the run directory ``path``; takes
    the lock only for an instant, and creates nothing."""
    if fcntl is None or not (Path(path) / LOCK).is_file():
        return
    try:
        handle = open(Path(path) / LOCK, "rb", buffering=0)
    except OSError:
        return  # an unreadable lock file: taking the lock itself will say what is wrong
    with handle:
        try:  # a shared lock: it conflicts with a writer's, not with another check's
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(path, handle) from None
        except OSError:
            return  # a file system without flock: taking the lock itself will say so


def _locked(path, handle) -> RunLockedError:
    """The one line for a run directory locked by another process, with the process id it recorded."""
    holder = ""
    with contextlib.suppress(OSError, ValueError):
        handle.seek(0)
        holder = f" (pid {int(handle.read(32).decode('ascii').strip())})"
    return RunLockedError(
        f"run directory {path} is being written by another process{holder}: one writer at a time; wait "
        "for it to end, or stop it"
    )


def probe_writable(directory) -> None:
    """Write and remove a small file in ``directory``; ConfigError with the system's reason if refused."""
    probe = Path(directory) / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"cnnx")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResourceError(f"cannot write in {directory} ({exc.strerror or exc})") from None


def check_free_space(directory, need_bytes: int) -> None:
    """ResourceError when the file system of ``directory`` has less than ``need_bytes`` free."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise ResourceError(
            f"not enough free space in {directory}: {_mib(free)} free, the run needs about {_mib(need_bytes)}"
        )


def estimate_run_bytes(model, optimizer=None) -> int:
    """Disk space a run needs at its peak: two checkpoints (the old one stays until its replacement is
    renamed over it), each the weights plus the optimizer's moments, then the record and the figures."""
    weights = sum(math.prod(p.shape) * p.dtype.itemsize for _, p, _ in model.named_parameters())
    weights += sum(b.size * b.dtype.itemsize for _, b in model.named_buffers())
    return _run_bytes(weights, optimizer)


def planned_run_bytes(parameters: int, dtype: str, optimizer=None) -> int:
    """:func:`estimate_run_bytes` before the model is built: ``parameters`` values of ``dtype`` (the
    layers' buffers, a few numbers per batch-norm channel, left out). ``optimizer`` may be its class."""
    return _run_bytes(parameters * np.dtype(dtype).itemsize, optimizer)


def _run_bytes(weights: int, optimizer) -> int:
    slots = len(getattr(optimizer, "slots", ()))
    return 2 * weights * (1 + slots) + RECORD_BYTES + FIGURES_BYTES


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete what a killed process left half-written in ``run_dir`` (never a finished file)."""
    removed = []
    for name in WRITTEN:
        for tmp in stale_temporaries(Path(run_dir) / name):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

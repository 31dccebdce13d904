"""Run directories: checked before the minutes of loading and training (writable, enough space, new
or resumable), then created and claimed by one run; the disk space a run needs; leftovers of a killed
process."""

from __future__ import annotations

import math
import os
import shutil
from datetime import datetime
from pathlib import Path

from cnnx.errors import ConfigError, ResourceError
from cnnx.fileio import stale_temporaries

CHECKPOINT = "model.npz"
METRICS = "metrics.json"
FIGURES = ("curves.png", "confusion_matrix.png", "samples.png")
PROBE_PREFIX = ".cnnx-probe-"
FIGURES_BYTES = 2 << 20  # three PNGs of a few hundred KiB at most, rounded up
RECORD_BYTES = 1 << 20  # metrics.json, with room for long histories


def default_run_dir(model_name: str, optimizer_name: str, root="runs") -> Path:
    """``runs/<timestamp>-<model>-<optimizer>``: a name for a new run (:func:`prepare_run_dir` adds a
    numeric suffix if another run takes it first)."""
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}-{optimizer_name}"


def check_run_dir(path, *, need_bytes: int = 0, resume: bool = False) -> Path:
    """Check, without creating anything, that a run can be written to ``path``.

    A new run needs ``path`` absent or an empty directory; a resumed one needs its checkpoint there. The
    directory (or, while it does not exist, its nearest existing parent) must accept a file (a probe file
    is written and removed) and hold ``need_bytes`` of free space. Raises ConfigError with one line.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory")
    if resume and not (path / CHECKPOINT).is_file():
        raise ConfigError(f"{path} holds no checkpoint ({CHECKPOINT}) to resume from")
    if not resume and path.is_dir() and any(path.iterdir()):
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


def prepare_run_dir(path, *, need_bytes: int = 0, unique: bool = False) -> Path:
    """Check the run directory with :func:`check_run_dir`, create it (and its parents) and claim it for
    this process by creating its ``metrics.json`` exclusively: two runs started at the same moment, in
    threads or processes, never share a directory. With ``unique`` (a generated name), a name that is
    taken or not empty moves on to ``<name>-2``, ``<name>-3``, ...; otherwise it is a ConfigError."""
    base, n = Path(path), 2
    path = base
    while True:
        if unique and path.exists() and (not path.is_dir() or any(path.iterdir())):
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
            continue
        path = check_run_dir(path, need_bytes=need_bytes)
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path / METRICS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            if not unique:
                raise ConfigError(f"run directory {path} was just taken by another run") from None
            path, n = base.with_name(f"{base.name}-{n}"), n + 1


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
    slots = len(getattr(optimizer, "slots", ()))
    return 2 * weights * (1 + slots) + RECORD_BYTES + FIGURES_BYTES


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete what a killed process left half-written in ``run_dir`` (never a finished file)."""
    removed = []
    for name in (CHECKPOINT, METRICS, *FIGURES):
        for tmp in stale_temporaries(Path(run_dir) / name):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

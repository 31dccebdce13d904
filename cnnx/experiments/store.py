"""Where a grid's runs live in a results folder, and how one run replaces another without losing it.

- ``<results>/<experiment>/<protocol>-<label>``: a run on the whole training set.
- ``<results>/trials/limit-<N>/<experiment>/<protocol>-<label>``: a run on a subset of N images (a
  trial, ``--limit N``). Trials live apart, so a trial never replaces a full run, nor one trial another
  of another size.
- A run that replaces the one in its directory (forced, other settings, a damaged record) trains in
  ``<label>.staging`` beside it. Only once it finished (completed or diverged) do the two change
  places: the old directory is renamed ``<label>.old``, the staging one takes its name, and the old one
  is deleted. Until then every reader sees the old run. A replacement that fails or is killed leaves the
  old run where it was, and the next grid resumes the staging directory from its checkpoint.
- :func:`settle` finishes a change of places that a killed grid left half done.
- Every change of places, and every removal of a replacement that never finished, holds the locks of
  the directories it moves or empties (:func:`cnnx.training.rundir.lock_run_dir`, the lock a run's
  writer holds), so it never moves or empties a directory a live process writes, and two grids never
  move the same one: the second gets :class:`~cnnx.errors.RunLockedError`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from cnnx.errors import ResourceError, RunLockedError
from cnnx.training.rundir import LOCK, lock_run_dir

from .records import read_metrics
from .spec import TRIALS, RunSpec

STAGING, OLD = ".staging", ".old"
LIMIT_PREFIX = "limit-"


def grid_root(results, limit: int | None = None) -> Path:
    """The folder of a grid's runs: ``results`` itself for full runs, ``results/trials/limit-N`` for a
    trial on N images."""
    results = Path(results)
    return results if limit is None else results / TRIALS / f"{LIMIT_PREFIX}{limit}"


def run_dir(results, spec: RunSpec) -> Path:
    """A run's directory: experiment/protocol-label under its grid's folder."""
    return grid_root(results, spec.config.limit) / spec.experiment / f"{spec.protocol}-{spec.label}"


def staging_dir(final: Path) -> Path:
    return final.with_name(final.name + STAGING)


def old_dir(final: Path) -> Path:
    return final.with_name(final.name + OLD)


def readable_dir(final: Path) -> Path:
    """Where a run's result is to be read: its directory, or, while a change of places is half done (a
    killed grid between its two renames), the old run that is still the result."""
    old = old_dir(final)
    return old if not final.exists() and old.is_dir() else final


def trial_limits(results) -> list[int]:
    """The subset sizes of the trials recorded under ``results``, smallest first."""
    folder = Path(results) / TRIALS
    if not folder.is_dir():
        return []
    sizes = [entry.name.removeprefix(LIMIT_PREFIX) for entry in folder.iterdir() if entry.is_dir()]
    return sorted(int(size) for size in sizes if size.isdigit() and size[0] != "0")


def promote(staging: Path, final: Path) -> bool:
    """Put the finished run in ``staging`` in the place of ``final`` (see the module's description).
    False, with nothing moved, when ``staging`` holds no finished run (another grid has just put it in
    place); RunLockedError when another process holds one of the directories."""
    old = old_dir(final)
    try:
        with _holding(staging, final, old):
            record = read_metrics(staging)
            if record is None or not record.finished:
                return False
            _remove(old)  # what an earlier change of places left
            if os.path.lexists(final):
                os.rename(final, old)
            os.rename(staging, final)
            with contextlib.suppress(OSError):  # the swap is done: what is left of old, settle removes
                _remove(old)
    except OSError as exc:
        raise ResourceError(
            f"cannot put the finished run {staging} in the place of {final} ({exc.strerror or exc})"
        ) from None
    return True


def settle(final: Path) -> None:
    """Finish or undo what a killed grid left of a change of places at ``final``; RunLockedError when
    another process is changing them now."""
    staging, old = staging_dir(final), old_dir(final)
    record = read_metrics(staging)
    if record is not None and record.finished:  # the grid that trained it ended before the swap
        promote(staging, final)
        return
    if not os.path.lexists(old):
        return
    try:
        with _holding(old):  # a grid changing places holds it from start to end
            if not os.path.lexists(final):
                os.rename(old, final)
            else:
                with contextlib.suppress(OSError):  # another grid removing it too; or left for the next
                    _remove(old)
    except OSError as exc:
        raise ResourceError(f"cannot tidy {old} ({exc.strerror or exc})") from None


def clear_unfinished(staging: Path) -> bool:
    """Empty the directory of a replacement that never finished (other settings, a damaged record, no
    checkpoint), so that a new replacement starts there; its lock file stays, so that a process that
    opens it meanwhile still meets the lock. False, with nothing removed, when it now holds a finished
    run (another grid has just trained it); RunLockedError when another process holds it."""
    if not staging.is_dir() or staging.is_symlink():
        return True
    try:
        with _holding(staging):
            record = read_metrics(staging)
            if record is not None and record.finished:
                return False
            for entry in staging.iterdir():
                if entry.name != LOCK:
                    _remove(entry)
    except OSError as exc:
        raise ResourceError(f"cannot empty {staging} ({exc.strerror or exc})") from None
    return True


@contextlib.contextmanager
def _holding(*directories: Path):
    """Hold the lock of each of ``directories`` that exists, in that order, for the block."""
    locks = []
    try:
        for directory in directories:
            lock = _lock(directory) if directory.is_dir() and not directory.is_symlink() else None
            if lock is not None:
                locks.append(lock)
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def _lock(directory: Path):
    """The lock of ``directory``, checked to be the one its path names once taken: a lock file whose
    directory another process renamed or removed meanwhile locks nothing that is still there. None when
    the directory is gone."""
    try:
        lock = lock_run_dir(directory)
    except ResourceError:
        if not os.path.lexists(directory):  # removed or renamed since it was seen
            return None
        raise
    try:
        same = os.path.samestat(os.fstat(lock.handle.fileno()), os.stat(directory / LOCK))
    except OSError:
        same = False
    if not same:
        lock.release()
        raise RunLockedError(f"run directory {directory} is being moved by another process")
    return lock


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()

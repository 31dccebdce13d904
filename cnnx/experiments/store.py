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
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cnnx.errors import ResourceError

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


def promote(staging: Path, final: Path) -> None:
    """Put the finished run in ``staging`` in the place of ``final`` (see the module's description)."""
    old = old_dir(final)
    try:
        _remove(old)  # what an earlier change of places left
        if os.path.lexists(final):
            os.rename(final, old)
        os.rename(staging, final)
        _remove(old)
    except OSError as exc:
        raise ResourceError(
            f"cannot put the finished run {staging} in the place of {final} ({exc.strerror or exc})"
        ) from None


def settle(final: Path) -> None:
    """Finish or undo what a killed grid left of a change of places at ``final``."""
    staging, old = staging_dir(final), old_dir(final)
    record = read_metrics(staging)
    if record is not None and record.finished:  # the grid that trained it ended before the swap
        promote(staging, final)
    elif os.path.lexists(old):
        try:
            if os.path.lexists(final):
                _remove(old)
            else:
                os.rename(old, final)
        except OSError as exc:
            raise ResourceError(f"cannot tidy {old} ({exc.strerror or exc})") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()

"""A run trained by the ranks of ``mpiexec -n N cnnx train ...``: which rank writes, and the check that
every rank trains the same thing from the same place.

Every rank builds the same run from the same command: it loads the data, builds (or restores) the
model and takes the same batches. Rank 0 alone writes the run directory; the others read it when they
resume. Before the first step every rank's settings, data and state (weights, buffers, optimizer
moments, random streams and position) are compared with rank 0's by their digests; a difference
stops every rank with one line naming it, since ranks that differ would train nothing meaningful.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np  # host: the digests read host copies

from cnnx.backends.mpi import world
from cnnx.errors import ConfigError

# Settings that say where a rank finds things or how it computes, not what the run is: they may differ.
PLACE_SETTINGS = ("data_dir", "workers")


class RanksDiffer(ConfigError):
    """The ranks of one run were given different settings, data or state (every rank raises it)."""


def writes() -> bool:
    """Whether this process writes the run's files: rank 0, or a process running alone."""
    place = world()
    return place is None or place.rank == 0


def describe() -> str | None:
    """The ranks, for the run's first lines (None when running alone)."""
    place = world()
    return None if place is None else place.describe()


def launcher() -> str:
    """What starts the command again on the same ranks: ``mpiexec -n 2 `` (nothing when running alone)."""
    place = world()
    return "" if place is None else f"mpiexec -n {place.size} "


def place_record() -> dict | None:
    """Where the ranks run, for the run's record (None when running alone): a launcher's message about
    a process id then names the rank."""
    place = world()
    return None if place is None else {"ranks": place.size, "hosts": place.hosts, "pids": place.pids}


def fingerprint(run) -> dict:
    """What must be the same on every rank: the settings (but where things are), digests of the data
    and of the state the first step starts from."""
    settings = {k: v for k, v in run.config.to_dict().items() if k not in PLACE_SETTINGS}
    settings["lr"] = run.optimizer.lr
    data = hashlib.sha256()
    for array in (run.images, run.labels, run.test_images, run.test_labels, run.val_images, run.val_labels):
        if array is not None:
            data.update(str((array.shape, str(array.dtype))).encode())
            data.update(np.ascontiguousarray(array).data)
    state = hashlib.sha256()
    for name, value in sorted(run.model.state_dict().items()):
        state.update(name.encode())
        state.update(np.ascontiguousarray(value).data)
    for name, value in sorted(run.optimizer.state_dict(run.backend.to_host).items()):
        state.update(name.encode())
        state.update(np.ascontiguousarray(value).data)
    position = [run.epoch_done, run.batch_done, run.step, run.rng.bit_generator.state]
    if run.augmenter is not None:
        position.append(run.augmenter.rng.bit_generator.state)
    state.update(json.dumps(position, sort_keys=True, default=str).encode())
    return {"settings": json.loads(json.dumps(settings, default=str)), "data": data.hexdigest(),
            "state": state.hexdigest()}  # fmt: skip


def check_same_everywhere(run) -> None:
    """RanksDiffer, naming the first rank and what differs, unless every rank's :func:`fingerprint` is
    rank 0's. Every rank must call it, at the same point."""
    place = world()
    if place is None:
        return
    prints = place.communicator().objects(fingerprint(run), "the check that every rank runs the same")
    first = prints[0]
    for rank, other in enumerate(prints[1:], start=1):
        for key in sorted(set(first["settings"]) | set(other["settings"])):
            mine, theirs = other["settings"].get(key), first["settings"].get(key)
            if mine != theirs:
                raise RanksDiffer(f"rank {rank} was given {key} {mine!r} where rank 0 has {theirs!r}: every "
                                  "rank of a run needs the same settings")  # fmt: skip
        if other["data"] != first["data"]:
            raise RanksDiffer(f"rank {rank} loaded different data from rank 0's: every rank of a run needs "
                              "the same data set (see its --data-dir and --limit)")  # fmt: skip
        if other["state"] != first["state"]:
            raise RanksDiffer(f"rank {rank} starts from other weights or another position than rank 0: "
                              "every rank must resume the same checkpoint")  # fmt: skip

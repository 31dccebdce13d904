"""MPI: the ranks of ``mpiexec -n N cnnx train ...`` as one data-parallel group (see :mod:`cnnx.parallel`).

Every rank runs the same program on the same data: it reads the batches itself, runs its shards of
each batch and meets the others in the collectives of :class:`MPIComm`, which mpi4py carries over
whatever MPI it was built against (``pip install 'cnnx[mpi]'`` brings MPICH from the package index).
mpi4py is imported here only, and only when the process was started by ``mpiexec`` with more than
one rank (:func:`launched_size` reads the launcher's environment without touching MPI).

Waiting never blocks for ever: a collective is started without blocking and then polled, and a rank
that gets no answer for :func:`timeout_seconds` (``CNNX_MPI_TIMEOUT``, 120 s by default) calls the
roll: every rank still running says so, and the first of them names those that did not answer in one
line before every rank stops (:class:`RankStalled`). A rank that dies is seen by the MPI launcher
itself, which ends every other rank at once.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import numpy as np  # host: MPI moves host memory

from cnnx.errors import CnnxError

from .comm import Communicator

# What launchers put in each rank's environment: MPICH's Hydra (PMI), Open MPI, and PMIx (Slurm's srun).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
DEFAULT_TIMEOUT = 120.0  # seconds without an answer before a rank calls the roll
FIRST_TIMEOUT = 600.0  # the first meeting waits for every rank to load its data
ROLL_SECONDS = 2.0  # how long the roll waits for the ranks still running to answer
ROLL_TAG = 7107
FORWARD_SECONDS = 0.3  # what a rank says before an abort is given this long to reach the launcher
SPIN_SECONDS = 0.002  # a collective is polled without sleeping this long, then with short sleeps


class MPIUnavailable(CnnxError):
    """Started by an MPI launcher, but MPI cannot be used from Python here."""


class RankStalled(CnnxError):
    """A rank gave no answer in time. ``speaker`` is the rank that says so (the first of those still
    running), so that the user reads the line once."""

    def __init__(self, text: str, speaker: int):
        super().__init__(text)
        self.speaker = speaker


def launched_size() -> int:
    """How many ranks the MPI launcher started this process among (1 when it was not started by one)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def timeout_seconds() -> float:
    """The seconds a rank waits for the others (``CNNX_MPI_TIMEOUT``, a positive number)."""
    text = os.environ.get("CNNX_MPI_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise CnnxError(f"CNNX_MPI_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(
            f"started by mpiexec with {launched_size()} ranks, but mpi4py does not import ({exc}): "
            "pip install 'cnnx[mpi]'"
        ) from None
    return MPI


def mpi_problem() -> str | None:
    """None when MPI training is usable here, else why not (for ``cnnx info``); never starts MPI."""
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # only the library's name is asked for: no MPI_Init
        from mpi4py import MPI
    except ImportError as exc:
        return f"mpi4py does not import ({exc}): pip install 'cnnx[mpi]'"
    except Exception as exc:  # noqa: BLE001 - a broken MPI library is a reason, not a crash
        return f"the MPI library does not load ({type(exc).__name__}: {exc})"
    return None if _launcher() else f"{_library(MPI)} loads, but no mpiexec is on the PATH"


def describe_mpi() -> str:
    """One line on the MPI here: mpi4py's version, the library and the launcher."""
    import mpi4py
    from mpi4py import MPI

    return f"mpi4py {mpi4py.__version__}, {_library(MPI)}, {_launcher()}"


def _library(MPI) -> str:
    first = MPI.Get_library_version().strip().splitlines()[0]
    return " ".join(first.split())


def _launcher() -> str | None:
    from shutil import which

    return which("mpiexec") or which("mpirun")


class World:
    """This process's place among the ranks: ``rank``, ``size``, the ranks on the same host
    (``local_rank``, ``local_size``), and each rank's host and process id."""

    def __init__(self):
        MPI = _import_mpi()
        if not MPI.Is_initialized():  # mpi_problem imported mpi4py without starting MPI
            MPI.Init()
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout_seconds()
        places = self.comm.allgather((socket.gethostname(), os.getpid()))
        self.hosts = [host for host, _ in places]
        self.pids = [pid for _, pid in places]
        mine = self.hosts[self.rank]
        self.local_rank = sum(1 for host in self.hosts[: self.rank] if host == mine)
        self.local_size = sum(1 for host in self.hosts if host == mine)
        self._comm = None
        _limit_blas(self.cores())

    def communicator(self) -> MPIComm:
        """The collectives of every rank (one object for the process: it knows whether they have met)."""
        if self._comm is None:
            self._comm = MPIComm(self)
        return self._comm

    def describe(self) -> str:
        """``2 MPI ranks: rank 0 pid 101 on vm, rank 1 pid 102 on vm``: a launcher names a rank that
        died by its process id and host."""
        places = ", ".join(
            f"rank {r} pid {pid} on {host}"
            for r, (pid, host) in enumerate(zip(self.pids, self.hosts, strict=True))
        )
        return f"{self.size} MPI ranks: {places}"

    def cores(self) -> int:
        """This rank's share of its host's cores."""
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, usable // self.local_size)

    def abort(self, code: int) -> None:
        """End every rank now with exit status ``code`` (the launcher ends them). MPI's own line about
        the abort is not shown: the caller has said why already."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(FORWARD_SECONDS)  # the launcher forwards what was said before the abort closes the pipes
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        self.comm.Abort(code)


def _limit_blas(threads: int) -> None:
    """Let BLAS use this rank's share of the cores (the ranks of one host would fight over them)."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    threadpool_limits(threads, user_api="blas")


_world: World | None = None


def started_world() -> World | None:
    """The ranks, when :func:`world` has joined them already (nothing is started here)."""
    return _world


def world() -> World | None:
    """The ranks this process was launched among, or None when it runs alone (no MPI is touched then)."""
    global _world
    if _world is None and launched_size() > 1:
        _world = World()
    return _world


class MPIComm(Communicator):
    """The ranks of the MPI world as one group's workers. Memory is private to each rank: a gathered
    table is a fresh array, and each rank keeps its own copy of everything the workers share."""

    shares_objects = False
    shares_memory = False
    spmd = True  # every rank runs the whole program: nobody waits for a leader's commands

    def __init__(self, place: World):
        self.place, self.comm, self.MPI = place, place.comm, place.MPI
        self.rank, self.size = place.rank, place.size
        self.first = True  # the first meeting waits longer: every rank loads its own data first
        self.seconds = 0.0  # spent in collectives (waiting for the others included), for benchmarks
        self.bytes = 0  # received by this rank's gathers

    def barrier(self, what: str = "a barrier") -> None:
        self._wait(self.comm.Ibarrier(), what)

    def allgather(self, rows, first: int, total: int, what: str = "a gather"):
        rows = np.ascontiguousarray(rows)
        place = np.array([first, len(rows)], np.int64)
        places = np.empty((self.size, 2), np.int64)
        self._wait(self.comm.Iallgather(place, places), what)
        if int(places[:, 1].sum()) != total:
            raise ValueError(f"the ranks gave {int(places[:, 1].sum())} rows of {total}")
        row_bytes = int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.dtype.itemsize
        table = np.empty((total, *rows.shape[1:]), rows.dtype)
        self.bytes += (total - len(rows)) * row_bytes
        counts = [int(c) * row_bytes for c in places[:, 1]]
        displacements = [int(f) * row_bytes for f in places[:, 0]]
        receive = [table.reshape(-1).view(np.uint8), counts, displacements, self.MPI.BYTE]
        self._wait(self.comm.Iallgatherv([rows.reshape(-1).view(np.uint8), self.MPI.BYTE], receive), what)
        return table

    def objects(self, value, what: str = "a check"):
        """Every rank's ``value`` (anything JSON writes; nothing is unpickled), in rank order."""
        data = np.frombuffer(_encoded(value), np.uint8)
        table = self.allgather(_framed(data), self.rank, self.size, what)
        return [_decoded(row) for row in table]

    def _wait(self, request, what: str) -> None:
        limit = max(FIRST_TIMEOUT, self.place.timeout) if self.first else self.place.timeout
        started = time.monotonic()
        pause = 0.0
        while not request.Test():
            waited = time.monotonic() - started
            if waited > limit:
                self._roll_call(what, limit)
            if waited > SPIN_SECONDS:
                pause = min(0.01, pause + 0.0001)
                time.sleep(pause)
        self.seconds += time.monotonic() - started
        self.first = False

    def _roll_call(self, what: str, waited: float) -> None:
        """Every rank that waits in vain says so to the others; those that never do are named."""
        me = np.array([self.rank], np.int64)
        sends = [self.comm.Isend(me, dest=r, tag=ROLL_TAG) for r in range(self.size) if r != self.rank]
        present, status = {self.rank}, self.MPI.Status()
        deadline = time.monotonic() + ROLL_SECONDS
        while time.monotonic() < deadline and len(present) < self.size:
            if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=ROLL_TAG, status=status):
                got = np.empty(1, np.int64)
                self.comm.Recv(got, source=status.Get_source(), tag=ROLL_TAG)
                present.add(int(got[0]))
            else:
                time.sleep(0.01)
        del sends  # the process ends after this: nobody needs to complete them
        absent = [r for r in range(self.size) if r not in present]
        who = (
            ("ranks " + ", ".join(map(str, absent)))
            if len(absent) > 1
            else f"rank {absent[0]}"
            if absent
            else None
        )
        if who is None:
            text = f"the ranks gave no answer for {waited:g} s in {what}"
        else:
            pids = ", ".join(f"{self.place.pids[r]} on {self.place.hosts[r]}" for r in absent)
            text = f"{who} (pid {pids}) gave no answer for {waited:g} s in {what}: stopping every rank"
        raise RankStalled(text, speaker=min(present))


FRAME_BYTES = 1 << 16  # the most bytes of one rank's object in MPIComm.objects (its JSON)


def _framed(data: np.ndarray) -> np.ndarray:
    """A row of FRAME_BYTES holding ``data`` after its length (the objects exchanged are small)."""
    if len(data) > FRAME_BYTES - 8:
        raise ValueError(f"an object of {len(data)} bytes is too large to compare across ranks")
    row = np.zeros((1, FRAME_BYTES), np.uint8)
    row[0, :8] = np.frombuffer(np.int64(len(data)).tobytes(), np.uint8)
    row[0, 8 : 8 + len(data)] = data
    return row


def _encoded(value) -> bytes:
    import json

    return json.dumps(value, sort_keys=True, default=str).encode()


def _decoded(row: np.ndarray):
    import json

    length = int(np.frombuffer(row[:8].tobytes(), np.int64)[0])
    return json.loads(row[8 : 8 + length].tobytes().decode())

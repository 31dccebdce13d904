"""Communicators: how the workers of one data-parallel step meet (see :mod:`cnnx.parallel`).

A communicator connects ``size`` workers, numbered by ``rank`` (0 is the leader: the process that
trains, writes and reads the data). It offers three collectives, each called by every worker in the
same order:

- :meth:`~Communicator.barrier`: nobody leaves before everybody has arrived;
- :meth:`~Communicator.allgather`: every worker gives the rows ``[first, first + len(rows))`` of a
  table of ``total`` rows, and every worker gets the whole table;
- :meth:`~Communicator.allreduce`: the sum of that table's rows, added in row order.

The sum is always taken over the whole table in row order, on every worker, so the numbers depend on
what the rows are (a batch's samples, the shards of a batch) and never on how many workers gave them.

Three implementations live here: :class:`SoloComm` (one worker: the collectives are copies),
:class:`ThreadComm` (threads of one process) and :class:`ProcessComm` (processes forked from the leader,
meeting in shared memory); :class:`cnnx.backends.mpi.MPIComm` is the fourth, whose ranks share nothing.
"""

from __future__ import annotations

import mmap
import os
import signal
import threading
import time
import traceback

import numpy as np

from cnnx.errors import CnnxError

POLL_SECONDS = 0.5  # how often a waiting worker looks whether the others are still alive
MAX_ERROR_BYTES = 2000


class WorkerError(CnnxError):
    """A worker of a data-parallel step failed, or died: the message names it and says why."""


class Communicator:
    """The collectives of ``size`` workers; this object is the view of worker ``rank``."""

    rank = 0
    size = 1
    shares_objects = True  # whether the workers share Python objects (threads) or only shared memory
    shares_memory = True  # whether they share arrays (False: MPI ranks, each with its own copy of everything)
    spmd = False  # True: every worker runs the whole program itself (MPI), instead of a leader's commands

    def barrier(self) -> None:
        raise NotImplementedError

    def allgather(self, rows, first: int, total: int, what: str = "a gather"):
        """The table of ``total`` rows whose rows ``[first, first + len(rows))`` this worker gives; the
        result is valid until this worker's next-but-one collective (copy it to keep it longer).
        ``what`` names the collective in the message of a worker that waits in vain."""
        raise NotImplementedError

    def allreduce(self, rows, first: int, total: int, what: str = "a sum"):
        """The sum of the gathered table's rows, added one after the other in row order: a new array."""
        return ordered_sum(self.allgather(rows, first, total, what))

    def shared_array(self, shape, dtype) -> np.ndarray:
        """A zeroed array every worker sees and writes (made by the leader before the workers start)."""
        return np.zeros(shape, dtype)

    def close(self) -> None:
        """End the other workers (the leader only)."""


class SoloComm(Communicator):
    """One worker: a gathered table is the worker's own rows."""

    def barrier(self) -> None:
        pass

    def allgather(self, rows, first: int, total: int, what: str = "a gather"):
        if first != 0 or len(rows) != total:
            raise ValueError(f"a lone worker gives all {total} rows, not [{first}, {first + len(rows)})")
        return rows


class _Failure:
    """The first failure among the workers, as one line, and whether the collectives are broken."""

    def __init__(self):
        self.lock = threading.Lock()
        self.text = None


class ThreadComm(Communicator):
    """Threads of one process. They share every object, so what a layer keeps (random streams, running
    averages) is written by the leader alone; a table is double-buffered: the rows of collective k
    stay valid until collective k + 2 writes over them."""

    def __init__(self, size: int, rank: int = 0, _shared=None):
        self.size, self.rank = size, rank
        self._shared = _shared or {
            "barrier": threading.Barrier(size),
            "tables": [[None] * size, [None] * size],
            "failure": _Failure(),
            "threads": [],
        }
        self._calls = 0

    def barrier(self) -> None:
        try:
            self._shared["barrier"].wait()
        except threading.BrokenBarrierError:
            raise WorkerError(self._shared["failure"].text or "a worker thread stopped") from None

    def allgather(self, rows, first: int, total: int, what: str = "a gather"):
        table = self._shared["tables"][self._calls % 2]
        self._calls += 1
        table[self.rank] = (first, rows)
        self.barrier()
        parts = sorted((part for part in table if part is not None), key=lambda p: p[0])
        out = np.concatenate([p[1] for p in parts]) if parts else rows[:0]
        if len(out) != total:
            raise ValueError(f"the workers gave {len(out)} rows of {total}")
        return out

    def launch(self, serve) -> ThreadComm:
        """Start workers 1..size-1 as threads running ``serve(comm)``; returns the leader's comm."""
        for rank in range(1, self.size):
            comm = ThreadComm(self.size, rank, self._shared)
            thread = threading.Thread(target=self._run, args=(serve, comm), name=f"cnnx-shard-{rank}")
            thread.start()
            self._shared["threads"].append(thread)
        return self

    def _run(self, serve, comm) -> None:
        try:
            serve(comm)
        except WorkerError:
            pass  # another worker failed first: its message is the one to give
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the leader
            self.fail(f"worker {comm.rank} failed: {_one_line(exc)}")

    def fail(self, text: str) -> None:
        """Record the first failure and break the collectives, so no worker waits for ever."""
        failure = self._shared["failure"]
        with failure.lock:
            failure.text = failure.text or text
        self._shared["barrier"].abort()

    def abort(self) -> None:
        """Break the collectives without a message of its own (the leader's own error is the one)."""
        self.fail("the leading thread stopped")

    def close(self) -> None:
        for thread in self._shared["threads"]:
            thread.join()
        self._shared["threads"].clear()


class ProcessComm(Communicator):
    """Processes forked from the leader, meeting in shared memory (anonymous shared mappings made before
    the fork). A barrier is one semaphore the others post to the leader and one per worker the leader
    posts back; every wait wakes up each :data:`POLL_SECONDS` to look whether the others still live, so a
    worker that dies (or a leader that dies) ends the collectives with one line instead of a hang.

    Tables are double-buffered in two shared regions of ``table_bytes`` each."""

    shares_objects = False

    def __init__(self, size: int, table_bytes: int):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.size, self.rank = size, 0
        self._arrive = ctx.Semaphore(0)
        self._go = [ctx.Semaphore(0) for _ in range(size)]
        self._tables = [_shared_bytes(table_bytes), _shared_bytes(table_bytes)]
        self._table_bytes = table_bytes
        self._offsets = self.shared_array((2, size, 2), np.int64)  # (first, rows) per worker and table
        self._state = self.shared_array((2,), np.int64)  # [aborted, failed rank + 1]
        self._error = self.shared_array((MAX_ERROR_BYTES,), np.uint8)
        self._calls = 0
        self._pids: list[int] = []
        self._leader_pid = os.getpid()

    def shared_array(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        buffer = _shared_bytes(max(1, count * dtype.itemsize))
        return np.frombuffer(buffer, dtype, count).reshape(shape)

    # -- the collectives ---------------------------------------------------------------------------

    def barrier(self) -> None:
        if self.rank == 0:
            for _ in range(self.size - 1):
                self._wait(self._arrive)
            for rank in range(1, self.size):
                self._go[rank].release()
        else:
            self._arrive.release()
            self._wait(self._go[self.rank])
        self._check()

    def allgather(self, rows, first: int, total: int, what: str = "a gather"):
        k = self._calls % 2
        self._calls += 1
        row_bytes = rows[0].nbytes if len(rows) else int(np.prod(rows.shape[1:])) * rows.dtype.itemsize
        if total * row_bytes > self._table_bytes:
            raise ValueError(f"a table of {total} rows of {row_bytes} bytes exceeds the shared region")
        table = np.frombuffer(
            self._tables[k], rows.dtype, total * int(np.prod(rows.shape[1:], dtype=np.int64))
        )
        table = table.reshape((total, *rows.shape[1:]))
        table[first : first + len(rows)] = rows
        self._offsets[k, self.rank] = (first, len(rows))
        self.barrier()
        covered = sorted(tuple(int(v) for v in self._offsets[k, r]) for r in range(self.size))
        if sum(count for _, count in covered) != total:
            raise ValueError(f"the workers gave {sum(c for _, c in covered)} rows of {total}")
        return table

    # -- starting, failing, ending -----------------------------------------------------------------

    def launch(self, serve) -> ProcessComm:
        """Fork workers 1..size-1, each running ``serve(comm)`` with its own rank, then ``os._exit``;
        returns the leader's comm. The children ignore Ctrl-C and SIGTERM: the leader decides when to stop,
        and a child whose leader is gone ends within :data:`POLL_SECONDS`."""
        for rank in range(1, self.size):
            pid = os.fork()
            if pid == 0:  # the child
                code = 0
                try:
                    # Ctrl-C and SIGTERM reach the whole process group: the leader alone stops the
                    # run (after the step, with a checkpoint) and then ends the workers.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    self.rank = rank
                    serve(self)
                except WorkerError:
                    code = 1
                except BaseException as exc:  # noqa: BLE001 - every failure must reach the leader
                    self.fail(f"worker {rank} failed: {_one_line(exc)}", rank)
                    code = 1
                finally:
                    os._exit(code)
            self._pids.append(pid)
        return self

    def fail(self, text: str, rank: int = 0) -> None:
        """Record the first failure (one line) and wake every waiting worker, which then raises it."""
        if not self._state[0]:
            data = text.encode("utf-8", "replace")[: MAX_ERROR_BYTES - 1]
            self._error[: len(data)] = np.frombuffer(data, np.uint8)
            self._error[len(data)] = 0
            self._state[1] = rank + 1
            self._state[0] = 1
        self._arrive.release()
        for sem in self._go:
            sem.release()

    def _failure_text(self) -> str:
        raw = bytes(self._error)
        text = raw[: raw.index(0)] if 0 in raw else raw
        return text.decode("utf-8", "replace") or "a worker process stopped"

    def _check(self) -> None:
        if self._state[0]:
            raise WorkerError(self._failure_text())

    def _wait(self, sem) -> None:
        while not sem.acquire(timeout=POLL_SECONDS):
            self._check()
            if self.rank == 0:
                self._look_at_children()
            elif os.getppid() != self._leader_pid:
                raise WorkerError(f"worker {self.rank}: the leading process is gone")
        self._check()

    def _look_at_children(self) -> None:
        for rank, pid in enumerate(self._pids, start=1):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._pids[rank - 1] = -1 if done == pid else pid
                how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"exited with status {os.WEXITSTATUS(status)}")  # fmt: skip
                if not self._state[0]:
                    self.fail(f"worker process {rank} {how}", rank)
                self._check()

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the workers to end (they end after a stop command or a failure); after ``timeout``
        seconds they are killed. Nothing is left running."""
        if os.getpid() != self._leader_pid:
            return
        deadline = time.monotonic() + timeout
        for pid in self._pids:
            if pid < 0:
                continue
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.001)
        self._pids.clear()

    def abort(self) -> None:
        """Break the collectives without a message of its own (the leader's own error is the one)."""
        self.fail("the leading process stopped")


def ordered_sum(table):
    """The sum of a table's rows, added one after the other in row order (a new array): the same numbers
    wherever the rows came from."""
    if len(table) == 0:
        return np.zeros(table.shape[1:], table.dtype)
    total = table[0].copy()
    for row in table[1:]:
        total += row
    return total


def _shared_bytes(nbytes: int) -> mmap.mmap:
    """An anonymous shared mapping: pages are committed only when touched, and a forked child shares
    them with its parent."""
    return mmap.mmap(-1, nbytes)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{at}"


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux; elsewhere threads serve)."""
    return hasattr(os, "fork") and os.uname().sysname == "Linux"

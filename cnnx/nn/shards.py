"""A batch cut into shards, and the shards one worker runs (see :mod:`cnnx.parallel`).

The partition is fixed by the batch: :func:`partition` cuts ``n`` rows into ``ceil(n / size)`` shards
of nearly equal length, whatever the machine. A worker runs a contiguous run of them; a layer that
needs the whole batch (batch norm's statistics) asks the :class:`ShardSet` for the sum over every
sample of the batch, which every worker gets the same, to the bit.
"""

from __future__ import annotations

from cnnx.backends.comm import SoloComm

from .random import BatchDraws

SHARD_SIZE = 32  # the default most rows of one shard (see cnnx.parallel for the measurements)
_SOLO = SoloComm()


def partition(n: int, size: int = SHARD_SIZE) -> list[int]:
    """The bounds ``[0, b1, ..., n]`` of the shards of a batch of ``n`` rows: ``ceil(n / size)`` shards
    whose lengths differ by at most one."""
    if n < 1 or size < 1:
        raise ValueError(f"a batch of {n} rows cannot be cut into shards of {size}")
    count = -(-n // size)
    return [n * i // count for i in range(count + 1)]


def assigned(shards: int, workers: int, rank: int) -> range:
    """The shards worker ``rank`` of ``workers`` runs: contiguous, as even as can be, worker 0 always
    among those with work (when there are fewer shards than workers, the last workers have none)."""
    busy = min(shards, workers)
    if rank >= busy:
        return range(shards, shards)
    return range(shards * rank // busy, shards * (rank + 1) // busy)


class ShardSet:
    """The shards of one batch of ``n`` rows that one worker runs: ``bounds`` is the batch's whole
    partition, ``mine`` the indices of this worker's shards, ``comm`` how the workers meet and ``draws``
    the batch's random draws (a :class:`~cnnx.nn.random.BatchDraws`, shared by the workers that share
    objects). ``backend`` moves device arrays to the host and back where the communicator takes host
    memory and the arrays are not (a GPU's, under MPI)."""

    def __init__(self, bounds: list[int], mine: range, comm=None, draws: BatchDraws | None = None,
                 backend=None):  # fmt: skip
        self.bounds, self.mine, self.backend = list(bounds), mine, backend
        self.comm = _SOLO if comm is None else comm
        self.n = self.bounds[-1]
        self.draws = BatchDraws(self.n) if draws is None else draws

    @classmethod
    def whole(cls, n: int, draws: BatchDraws | None = None) -> ShardSet:
        """The whole batch as one shard, run by a lone worker."""
        return cls([0, n], range(1), None, draws)

    @property
    def leader(self) -> bool:
        """Whether this worker writes what the workers keep (batch norm's running averages): the first
        where they share memory, each where every one keeps its own (MPI ranks)."""
        return self.comm.rank == 0 or not self.comm.shares_memory

    @property
    def rows(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each of this worker's shards, in order."""
        return [(self.bounds[i], self.bounds[i + 1]) for i in self.mine]

    @property
    def first_row(self) -> int:
        return self.bounds[self.mine.start] if len(self.mine) else self.n

    def shard_draws(self) -> list[BatchDraws]:
        """Each shard's view of the batch's draws."""
        return [self.draws.shard(start, stop) for start, stop in self.rows]

    def batch_sum(self, xp, per_sample: list, like):
        """The sum over every sample of the batch, in sample order, of per-sample values: ``per_sample``
        holds one (rows, ...) array for each of this worker's shards. Every worker gets the same
        numbers as a whole-batch sum over the same per-sample values. ``like`` is an array of one
        sample's shape and dtype (for a worker with no shards)."""
        local = xp.concatenate(per_sample) if per_sample else xp.zeros((0, *like.shape), like.dtype)
        if self.comm.size == 1:
            return local.sum(axis=0)
        if self.backend is None or self.backend.host_memory:
            return self.comm.allgather(local, self.first_row, self.n).sum(axis=0)
        table = self.comm.allgather(self.backend.to_host(local), self.first_row, self.n)
        return self.backend.to_device(table).sum(axis=0)  # the same reduction as one device's

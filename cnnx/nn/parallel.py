"""A data-parallel group: the workers that run every step of one model together, shard by shard.

Every batch is cut into shards fixed by the batch (:func:`cnnx.nn.shards.partition`). Each worker runs
the whole forward and backward of its shards on one thread, through the one model, and the workers
meet only where the mathematics needs the whole batch:

- batch norm's statistics: every sample's sums, added in sample order (synchronised batch norm);
- the loss, whose gradient is divided by the whole batch's size;
- the gradients: each shard's are gathered, and each worker adds, in shard order, those of the
  parameters it owns (a contiguous run of them, about 1 / workers of the values);
- the optimizer update, which each worker applies to the parameters it owns.

So the numbers depend on the partition and never on how many workers there are. The workers are
processes forked from the leader (rank 0, the process that reads the data and writes the run), which
share the parameters, buffers and moments in shared memory; threads serve where processes cannot be
forked, and for comparison. With one worker nothing starts: the leader runs every shard itself.

Under ``mpiexec`` the workers are the MPI ranks (:mod:`cnnx.backends.mpi`). Each runs the whole program
on its own copy of everything: it reads the batch itself, gets every shard's gradients and applies
the whole update, so every rank holds the same weights after every step without sending any.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import numpy as np  # host: the shared tables live in host memory (the CPU backend's arrays)

from cnnx.backends.comm import ProcessComm, SoloComm, ThreadComm, WorkerError, can_fork, ordered_sum
from cnnx.backends.mpi import world
from cnnx.errors import ConfigError

from .losses import correct_count, softmax_cross_entropy
from .random import STATE_SIZE, BatchDraws, generator_from_state, pack_state
from .shards import SHARD_SIZE, ShardSet, assigned, partition

KINDS = ("processes", "threads")
TRAIN, LOGITS, STOP = 1, 2, 3
STOP_REASONS = ("SIGINT", "SIGTERM")  # a stop's reason as a number the ranks exchange (others: "stop")


@contextmanager
def data_parallel(model, optimizer=None, *, max_batch: int, workers: int | None = None,
                  shard_size: int = SHARD_SIZE, kind: str | None = None, ranks: bool = False):  # fmt: skip
    """A :class:`ShardGroup` for ``model`` where its backend shards steps (the CPU), or None where a step
    runs whole (a GPU, whose kernels are parallel already): ``with data_parallel(model, opt,
    max_batch=128) as group: ...``. Either way the block runs in the backend's parallel region. With
    ``ranks`` under ``mpiexec``, the group's workers are the MPI ranks (every rank must then make the
    same calls), and ``workers`` and ``kind`` are not used; without it each rank has its own group."""
    place = world() if ranks else None
    if place is not None:  # on GPUs too: each rank has its own device (see CupyBackend)
        with ShardGroup(model, optimizer, max_batch=max_batch, shard_size=shard_size,
                        comm=place.communicator()) as group:  # fmt: skip
            yield group
        return
    if not model.backend.data_parallel:
        with model.backend.parallel_region():
            yield None
        return
    with ShardGroup(model, optimizer, max_batch=max_batch, workers=workers, shard_size=shard_size,
                    kind=kind) as group:  # fmt: skip
        yield group


def owned_ranges(sizes: list[int], workers: int) -> list[range]:
    """Which parameters (by index) each worker owns: contiguous runs of about equal numbers of values."""
    total, starts, at = sum(sizes), [], 0
    for size in sizes:
        starts.append(at)
        at += size
    cuts = [0]
    for rank in range(1, workers):
        goal = total * rank / workers
        cuts.append(max(cuts[-1], sum(1 for start in starts if start < goal)))
    cuts.append(len(sizes))
    return [range(cuts[r], cuts[r + 1]) for r in range(workers)]


class ShardGroup:
    """The workers of one model (and its optimizer, for training): ``with ShardGroup(model, optimizer,
    max_batch=128) as group: group.train_step(x, y)``.

    ``workers`` defaults to the backend's (the CPU's cores; one on a GPU), ``kind`` to processes where
    they can be forked. ``max_batch`` is the most rows a step or an evaluation gives at once. ``comm``,
    a communicator whose workers run the whole program each (MPI's ranks), replaces ``workers`` and
    ``kind``: nothing is started then, and every worker must make the same calls.
    """

    def __init__(self, model, optimizer=None, *, max_batch: int, workers: int | None = None,
                 shard_size: int = SHARD_SIZE, kind: str | None = None, comm=None):  # fmt: skip
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"workers are processes or threads, not {kind!r}")
        self.model, self.optimizer, self.backend, self.xp = model, optimizer, model.backend, model.xp
        self.max_batch, self.shard_size = int(max_batch), int(shard_size)
        most = len(partition(self.max_batch, self.shard_size)) - 1
        if comm is not None:
            self.workers, self.kind = comm.size, "mpi"
        else:
            self.workers = max(1, min(model.backend.workers() if workers is None else int(workers), most))
            self.kind = kind or ("processes" if can_fork() else "threads")
        self.names, self.owners, sizes = [], [], []
        for name, layer, key in model._parameter_owners():
            self.names.append(name)
            self.owners.append((layer, key))
            sizes.append(int(layer.params[key].size))
        self.offsets = [0, *itertools.accumulate(sizes)]  # where each parameter's values start
        if comm is None or comm.shares_memory:
            self.owned = owned_ranges(sizes, self.workers)
        else:  # every rank adds every gradient and updates every parameter of its own copy
            self.owned = [range(len(sizes))] * self.workers
        self.comm, self._given = None, comm
        self._shared = []  # (table, key, shared array) of the state put in shared memory
        self._draws = None

    # -- starting and ending -----------------------------------------------------------------------

    def __enter__(self) -> ShardGroup:
        # A forked worker or a thread computes on one core; an MPI rank on its share of its host's.
        self._region = self.backend.parallel_region() if self.kind == "mpi" else self.backend.sharded()
        self._region.__enter__()
        try:
            self._start()
        except BaseException:
            self._region.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            self.close(failed=exc is not None)
        finally:
            self._region.__exit__(None, None, None)

    def _start(self) -> None:
        dtype, values = self.model.dtype, self.offsets[-1]
        classes = math.prod(self.model.output_shapes()[-1])
        shards = len(partition(self.max_batch, self.shard_size)) - 1
        if self._given is not None:
            self.comm = self._given
        elif self.workers == 1:
            self.comm = SoloComm()
        elif self.kind == "threads":
            self.comm = ThreadComm(self.workers)
        else:
            widest = max([1, *(int(b.size) for _, b in self.model.named_buffers())])
            table = max(shards * (values + 2), self.max_batch * 2 * widest) * dtype.itemsize
            self.comm = ProcessComm(self.workers, max(table, len(self.names) * 16, 1 << 16))
            self._share_state()
        comm = self.comm
        # The tables the workers share are host memory; MPI ranks share none, and keep the batch, the
        # logits and the summed gradients on their own device.
        array = comm.shared_array if comm.shares_memory else self._device_zeros
        self.control = comm.shared_array((4,), np.int64)  # host: [command, rows, clip?, skip?]
        self.numbers = comm.shared_array((2,), np.float64)  # host: [learning rate, clip norm]
        self.inputs = array((self.max_batch, *self.model.input_shape), dtype)
        self.labels = array((self.max_batch,), "int64")
        self.logits_out = array((self.max_batch, classes), dtype)
        self.grad_sum = array((values,), dtype)
        self.outcome = comm.shared_array((3,), np.float64)  # host: [loss, correct, skipped?] of the last step
        shapes = [layer.params[key].shape for layer, key in self.owners]
        self.grad_views = {  # the summed gradients, where the optimizer reads them
            name: self.grad_sum[self.offsets[i] : self.offsets[i + 1]].reshape(shape)
            for i, (name, shape) in enumerate(zip(self.names, shapes, strict=True))
        }
        if comm.size > 1 and not comm.spmd:
            comm.launch(self._serve)

    def _device_zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def _to_host(self, array):
        """``array`` where the communicator takes it: as it is in host memory, else copied there."""
        return array if self.backend.host_memory else self.backend.to_host(array)

    def _to_device(self, array, dtype):
        return array if self.backend.host_memory else self.backend.to_device(array, dtype)

    def _share_state(self) -> None:
        """Move the parameters, buffers and optimizer moments into shared memory (processes only)."""
        tables = [layer.params for layer, _ in self.owners]
        keys = [key for _, key in self.owners]
        for layer in [self.model, *(layer for _, layer in self.model.named_layers())]:
            tables += [layer.buffers] * len(layer.buffers)
            keys += list(layer.buffers)
        if self.optimizer is not None:
            for slot in self.optimizer.slots:
                table = self.optimizer.state.setdefault(slot, {})
                for name, (layer, key) in zip(self.names, self.owners, strict=True):
                    if name not in table:
                        table[name] = self.xp.zeros_like(layer.params[key])  # what the first step makes
                    tables.append(table)
                    keys.append(name)
        for table, key in zip(tables, keys, strict=True):
            shared = self.comm.shared_array(table[key].shape, table[key].dtype)
            shared[...] = table[key]
            table[key] = shared
            self._shared.append((table, key, shared))

    def close(self, failed: bool = False) -> None:
        """Stop the workers (nothing is left running) and take the shared state back into private
        arrays."""
        comm, self.comm = self.comm, None
        if comm is None:
            return
        try:
            if comm.size > 1 and not comm.spmd:
                if failed:
                    comm.abort()
                else:
                    self.control[0] = STOP
                    try:
                        comm.barrier()
                    except WorkerError:
                        pass
                comm.close()
        finally:
            for table, key, shared in self._shared:
                if table.get(key) is shared:
                    table[key] = np.array(shared)  # host: a private copy of the CPU's shared array
            self._shared.clear()

    # -- the leader's calls ----------------------------------------------------------------------

    def train_step(self, x, labels, *, clip: float | None = None, skip_nonfinite: bool = False):
        """One step on the batch ``x`` with integer ``labels`` (device arrays): ``(loss summed over the
        batch, number correct)`` as 0-d arrays, or None when ``skip_nonfinite`` skipped a step whose loss
        or gradients were not all finite (nothing changed then). ``clip`` scales the summed gradients
        down to that global norm, as :func:`cnnx.training.step.clip_gradients` does."""
        n = self._send(x, labels)
        self.control[2:] = (clip is not None, bool(skip_nonfinite))
        self.numbers[:] = (self.optimizer.lr, 0.0 if clip is None else clip)
        self._command(TRAIN, n)
        if self.outcome[2]:
            return None
        loss = np.asarray(self.outcome[0] * n)  # host: the outcome table's numbers
        correct = np.asarray(int(self.outcome[1]))  # host
        return self.backend.to_device(loss, self.model.dtype), self.backend.to_device(correct, "int64")

    def logits(self, x):
        """The evaluation logits of the batch ``x``, each worker computing its shards'."""
        n = self._send(x, None)
        self._command(LOGITS, n)
        return self.logits_out[:n].copy()

    def _send(self, x, labels) -> int:
        n = len(x)
        if n > self.max_batch:
            raise ValueError(f"a batch of {n} rows is larger than this group's {self.max_batch}")
        self.inputs[:n] = x
        if labels is not None:
            self.labels[:n] = labels
        return n

    def _command(self, command: int, n: int) -> None:
        self.control[0], self.control[1] = command, n
        self._draws = BatchDraws(n)  # for workers that share objects (threads)
        if not self.comm.spmd:
            self.comm.barrier()  # the workers wait here for each command
        self._run(self.comm)

    def agreed(self, reason: str | None) -> str | None:
        """Why the workers stop after this step (None: they go on). MPI ranks each get their own
        signals, maybe a step apart, so they exchange them: every rank gets the same answer, the first
        rank's reason first. Elsewhere the leader's ``reason`` is the answer."""
        comm = self.comm
        if comm is None or not comm.spmd:
            return reason
        code = 0 if not reason else STOP_REASONS.index(reason) + 1 if reason in STOP_REASONS else 3
        codes = comm.allgather(np.array([code], np.int64), comm.rank, comm.size, "the stop check")  # host
        first = next((int(c) for c in codes if c), 0)
        return None if first == 0 else STOP_REASONS[first - 1] if first <= len(STOP_REASONS) else "stop"

    # -- every worker's part -----------------------------------------------------------------------

    def _serve(self, comm) -> None:
        """A worker's loop: wait for a command, run its part, until told to stop."""
        while True:
            comm.barrier()
            if self.control[0] == STOP:
                return
            self._run(comm)

    def _run(self, comm) -> None:
        n = int(self.control[1])
        bounds = partition(n, self.shard_size)
        mine = assigned(len(bounds) - 1, comm.size, comm.rank)
        draws = self._draws if comm.shares_objects else BatchDraws(n)
        shards = ShardSet(bounds, mine, comm, draws, self.backend)
        xs = [self.inputs[a:b] for a, b in shards.rows]
        if self.control[0] == LOGITS:
            ys, _ = self.model.forward_shards(xs, False, shards)
            if comm.shares_memory:
                for (a, b), y in zip(shards.rows, ys, strict=True):
                    self.logits_out[a:b] = y
                comm.barrier()
            else:
                local = self.xp.concatenate(ys) if ys else self.logits_out[:0]
                table = comm.allgather(self._to_host(local), shards.first_row, n, "the evaluation")
                self.logits_out[:n] = self._to_device(table, self.model.dtype)
        else:
            self._train(comm, shards, xs)

    def _train(self, comm, shards: ShardSet, xs: list) -> None:
        xp, n, values = self.xp, shards.n, self.offsets[-1]
        logits, saved = self.model.forward_shards(xs, True, shards)
        table = xp.empty((len(xs), values + 2), dtype=self.model.dtype)
        dlogits = []
        for i, ((a, b), out) in enumerate(zip(shards.rows, logits, strict=True)):
            loss, d = softmax_cross_entropy(xp, out, self.labels[a:b], count=n)
            table[i, values], table[i, values + 1] = loss, correct_count(out, self.labels[a:b])
            dlogits.append(d)
        _, grads = self.model.backward_shards(saved, dlogits, False, shards)
        if len(shards.bounds) - 1 < comm.size and not comm.shares_objects:
            self._align_streams(comm, shards)
        for i, own in enumerate(grads):
            for j, name in enumerate(self.names):
                table[i, self.offsets[j] : self.offsets[j + 1]] = own[name].ravel()
        first = shards.mine.start if len(shards.mine) else len(shards.bounds) - 1
        whole = comm.allgather(self._to_host(table), first, len(shards.bounds) - 1, "the gradient sum")
        owned = self.owned[comm.rank]
        lo, hi = self.offsets[owned.start], self.offsets[owned.stop]
        self.grad_sum[lo:hi] = self._to_device(ordered_sum(whole[:, lo:hi]), self.model.dtype)
        loss = ordered_sum(whole[:, values].astype("float64"))
        correct = int(whole[:, values + 1].sum())
        skipped = self._finish(comm, owned, loss)
        if comm.rank == 0 or comm.spmd:
            self.outcome[:] = (float(loss), correct, skipped)
        if comm.shares_memory:
            comm.barrier()  # every parameter is updated before anyone reads one

    def _align_streams(self, comm, shards: ShardSet) -> None:
        """A worker with no shard of the batch drew nothing (only a layer that runs draws): it takes
        worker 0's random streams, which made the batch's draws as every worker with shards did."""
        streams = [rng for _, rng in self.model.named_streams()]
        if not streams:
            return
        packed = np.concatenate([pack_state(rng) for rng in streams])[None]  # host: generator states
        table = comm.allgather(packed, comm.rank, comm.size, "the random streams")
        if not len(shards.mine):
            for i, rng in enumerate(streams):
                state = table[0, i * STATE_SIZE : (i + 1) * STATE_SIZE]
                rng.bit_generator.state = generator_from_state(state).bit_generator.state

    def _finish(self, comm, owned: range, loss) -> bool:
        """Check and clip the summed gradients if asked, then update the owned parameters; whether the
        step was skipped."""
        xp, clip, skip = self.xp, bool(self.control[2]), bool(self.control[3])
        self.model.set_grads(self.grad_views)
        if clip or skip:
            rows = []  # each owned gradient's squares and finiteness, read back at once
            for index in owned:
                grad = self.grad_views[self.names[index]]
                rows.append(xp.stack([(grad * grad).sum(), xp.isfinite(grad).all().astype(grad.dtype)]))
            read = self.backend.to_host(xp.stack(rows)) if rows else np.zeros((0, 2))  # host
            stats = read.astype(np.float64)  # host
            # Where memory is private, every rank has every gradient: its own sums are the whole table.
            table = comm.allgather(stats, owned.start, len(self.names)) if comm.shares_memory else stats
            squares = ordered_sum(table[:, 0])
            if skip and not (table[:, 1].all() and np.isfinite(loss)):  # host: read-back values
                return True
            if clip:
                scale = min(1.0, float(self.numbers[1]) / (math.sqrt(float(squares)) + 1e-6))
                for index in owned:
                    grad = self.grad_views[self.names[index]]
                    grad *= grad.dtype.type(scale)
        optimizer = self.optimizer
        optimizer.lr = float(self.numbers[0])
        if comm.shares_objects:  # threads share one optimizer: the leader applies the whole update
            comm.barrier()  # every owner's sums are in
            if comm.rank == 0:
                optimizer.step()
        else:
            optimizer.step(names=[self.names[i] for i in owned])
        return False

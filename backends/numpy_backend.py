"""The CPU backend: ``xp`` is NumPy, a transfer is a plain copy, and large kernels run on a small pool of
threads (NumPy and the BLAS library release the GIL while they compute)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from .base import Backend

# Below this many elements a kernel runs in one piece: handing a part to another thread costs tens of
# microseconds, about what NumPy needs for this much elementwise work.
MIN_SPLIT_WORK = 1 << 16

# Scratch of about this size per block (see cache_block) stays in a core's L2 cache between being written
# and being read. Measured for the convolutions of the presets on 2 cores: blocks of 1 to 2 MiB of
# unfolded windows ran the forward 20-30 % faster than unfolding the whole batch to memory first.
CACHE_BLOCK_BYTES = 2 << 20


class NumpyBackend(Backend):
    """NumPy on the host.

    Inside :meth:`parallel_region`, :meth:`split_batch` cuts large kernels into parts that run on a
    small pool of threads, and BLAS runs one thread per call. ``threads`` is how many parts: None (the
    default) takes the BLAS library's thread count when the region opens, so ``OPENBLAS_NUM_THREADS=1``
    or threadpoolctl's ``threadpool_limits(1)`` switches the pool off too; 1 computes everything on one
    thread. Every part gives the same numbers however the work is cut, so the thread count never
    changes a result. Outside a region every kernel runs in one piece and BLAS keeps its own threads
    (OpenBLAS's threaded products may round differently from its one-thread products).

    Why the cores change hands in a region: after each product, OpenBLAS keeps its worker threads
    spinning for a while (up to about 0.1 s) in case another product follows. Layers call a product
    every few milliseconds, so those workers never sleep, and a thread of ours that wants the same core
    gets a fraction of it. Measured on 2 cores, batch 128: the 2x2 max-pool forward took 2.9 ms split
    over two threads alone, 5.3 ms between the convolution's products. Inside the region BLAS runs one
    thread per call and the layers cut their products by rows, as they cut everything else, so every
    core works on a part of every kernel; the products are as fast as with BLAS's own threads (3.6
    against 3.7 ms for the second convolution's forward).

    The first region also asks glibc's allocator to keep the memory it frees for reuse
    (:func:`keep_freed_memory`): by default each large temporary is a fresh mapping, and its first
    touch page-faults every 4 KiB of it (measured: the first convolution's forward, 2.8 ms with reuse,
    6.8 ms without).
    """

    name = "cpu"
    xp = np
    data_parallel = True
    host_memory = True
    threads: int | None = None  # also for subclasses that do not call __init__

    def __init__(self, threads: int | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or a whole number >= 1, got {threads!r}")
        self.threads = threads

    # Both transfers copy, as CuPy's do: code that writes into what it sent or got back must behave
    # the same on every backend (a batch-sized copy costs microseconds next to a training step).
    def to_device(self, array, dtype=None):
        return np.array(array, dtype=dtype, copy=True)

    def to_host(self, array) -> np.ndarray:
        return np.array(array, copy=True)

    def split_batch(self, fn, n: int, work: int = 0) -> None:
        parts = min(self.threads or _cores.parts(), n) if _cores.depth and not _cores.sharded else 1
        if parts < 2 or work < MIN_SPLIT_WORK:
            fn(slice(0, n))
            return
        bounds = [n * i // parts for i in range(parts + 1)]
        pool = _executor(parts - 1)
        futures = [pool.submit(fn, slice(bounds[i], bounds[i + 1])) for i in range(1, parts)]
        try:
            fn(slice(bounds[0], bounds[1]))  # the calling thread takes the first part
        finally:
            # Every part finishes before anything returns or raises: none may still be writing into the
            # caller's arrays afterwards. The first error wins.
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def cache_block(self, n: int, item_bytes: int) -> int:
        return max(1, min(n, CACHE_BLOCK_BYTES // max(1, item_bytes)))

    @contextmanager
    def parallel_region(self):
        _cores.enter()
        try:
            yield
        finally:
            _cores.leave()

    def workers(self) -> int:
        if self.threads is not None:
            return self.threads
        return _cores.parts() if _cores.depth else blas_threads()

    @contextmanager
    def sharded(self):
        with self.parallel_region():
            _cores.sharded += 1
            try:
                yield
            finally:
                _cores.sharded -= 1

    def describe(self) -> str:
        return f"cpu (NumPy {np.__version__})"


class _Cores:
    """Who has the cores: the BLAS library's threads (outside any region) or the pool (inside one).

    The first region to open reads BLAS's thread count (that becomes the number of parts) and sets every
    loaded BLAS library to one thread; the last one to close gives each its count back. Regions of
    several threads share the count, under a lock.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.depth = 0
        self.saved = 1  # BLAS's thread count when the outermost region opened
        self.blas = None  # threadpoolctl's controllers for the BLAS libraries, made on first use
        self.restore = []  # (controller, its thread count) when the outermost region opened
        self.sharded = 0  # > 0 while data-parallel workers run: each computes on one thread

    def controllers(self):
        if self.blas is None:
            from threadpoolctl import ThreadpoolController  # installed with scikit-learn

            self.blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        return self.blas

    def parts(self) -> int:
        """How many parts a split inside a region makes: BLAS's thread count when the region opened."""
        return self.saved

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                keep_freed_memory()
                self.blas = None  # look again: a BLAS library loaded since (scipy's, torch's) is pinned too
                self.saved = blas_threads()
                self.restore = [(c, c.get_num_threads()) for c in self.controllers()]
                for controller, _ in self.restore:
                    controller.set_num_threads(1)
            self.depth += 1

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for controller, threads in self.restore:
                    controller.set_num_threads(threads)


_cores = _Cores()
_malloc_tuned = False


def keep_freed_memory() -> None:
    """Ask glibc's malloc to serve large blocks from its heap and keep what is freed there, so that a
    training step's temporaries reuse pages already mapped instead of page-faulting fresh ones each
    time. Once per process; nothing happens where the C library is not glibc. Peak memory does not
    change (the same blocks are live at the peak); the process keeps its peak after the peak is over."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt  # glibc only: AttributeError elsewhere
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)  # blocks under 1 GiB come from the heap, not a mapping of their own
    mallopt(m_trim_threshold, (1 << 31) - 1)  # and the heap is not given back as it shrinks


def blas_threads() -> int:
    """How many threads NumPy's BLAS uses now (a fraction of a microsecond to ask), or the number of
    usable cores when threadpoolctl finds no BLAS library it can query."""
    controllers = _cores.controllers()
    if controllers:
        return max(1, controllers[0].get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """The process's worker threads (at least ``workers`` of them, and one fewer than the cores),
    started on first use; they sleep when there is no work."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old, _pool_size = _pool, max(workers, (os.cpu_count() or 1) - 1, 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="cnnx")
            if old is not None:
                old.shutdown(wait=False)  # its threads end once their queue is empty
        return _pool


def _forget_threads() -> None:
    # A forked child has the pool object but none of its threads, and locks perhaps held by a thread
    # that does not exist there: it starts afresh.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()
    _cores.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)

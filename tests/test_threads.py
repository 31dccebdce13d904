"""The CPU backend's thread pool: how split_batch cuts work, what a parallel region does to BLAS, and that
the threaded layers give the same numbers, to the bit, as the unthreaded ones."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from cnnx import functional as F
from cnnx.backends import NumpyBackend
from cnnx.backends.numpy_backend import MIN_SPLIT_WORK, blas_threads, keep_freed_memory
from cnnx.layers import BatchNorm1D, BatchNorm2D, Conv2D, MaxPool2D, ReLU
from cnnx.nn import build_model
from cnnx.optim import Adam
from cnnx.training import evaluate, train_step

import reference as ref

BIG = 10 * MIN_SPLIT_WORK  # enough work to be split


def record_parts(backend, n, work=BIG, barrier=None):
    parts, lock = [], threading.Lock()

    def fn(s):
        if barrier is not None:
            barrier.wait()  # every part waits for the others: they run at the same time, or this times out
        with lock:
            parts.append((s.start, s.stop, threading.get_ident()))

    backend.split_batch(fn, n, work)
    return sorted(parts)


def test_split_batch_covers_the_range_once_in_parts_on_several_threads():
    backend = NumpyBackend(threads=3)
    with backend.parallel_region():
        parts = record_parts(backend, 10, barrier=threading.Barrier(3, timeout=10))
    assert [(a, b) for a, b, _ in parts] == [(0, 3), (3, 6), (6, 10)]
    assert len({ident for *_, ident in parts}) == 3, "the parts did not run on three threads"
    assert threading.get_ident() in {ident for *_, ident in parts}, "the caller took no part"


def test_split_batch_runs_in_one_piece_outside_a_region_for_small_work_or_one_thread():
    backend = NumpyBackend(threads=3)
    assert [(a, b) for a, b, _ in record_parts(backend, 10)] == [(0, 10)], "split outside a region"
    with backend.parallel_region():
        assert [(a, b) for a, b, _ in record_parts(backend, 10, work=MIN_SPLIT_WORK - 1)] == [(0, 10)]
        assert len(record_parts(backend, 2)) == 2, "never more parts than items"
    single = NumpyBackend(threads=1)
    with single.parallel_region():
        assert [(a, b) for a, b, _ in record_parts(single, 10)] == [(0, 10)]


def test_a_failing_part_raises_only_after_every_part_has_finished():
    backend = NumpyBackend(threads=2)
    finished = []

    def fn(s):
        if s.start == 0:
            raise RuntimeError("first part failed")
        threading.Event().wait(0.05)  # the other part is still running when the first one fails
        finished.append(s)

    with backend.parallel_region(), pytest.raises(RuntimeError, match="first part failed"):
        backend.split_batch(fn, 4, BIG)
    assert finished == [slice(2, 4)], "split_batch returned before the second part had finished"


def blas_counts():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_a_region_gives_blas_one_thread_and_the_pool_blas_count_then_restores_it():
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != 2:
            pytest.skip("no BLAS library whose threads threadpoolctl can set")
        backend = NumpyBackend()
        with backend.parallel_region():
            assert blas_counts() == [1] * len(blas_counts())
            with backend.parallel_region():  # nested: nothing changes
                assert len(record_parts(backend, 8)) == 2, "the pool did not take BLAS's two threads"
            assert blas_counts() == [1] * len(blas_counts()), "the inner region gave BLAS its threads back"
        assert blas_threads() == 2, "the region did not give BLAS its threads back"


LATE_BLAS = """
from threadpoolctl import threadpool_info, threadpool_limits
from cnnx.backends import NumpyBackend
counts = lambda: [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
backend = NumpyBackend()
with threadpool_limits(limits=2, user_api="blas"):
    with backend.parallel_region():  # the first region looks for BLAS libraries: only NumPy's is loaded
        pass
    before = len(counts())
    import scipy.linalg  # its wheel brings a BLAS library of its own
    if len(counts()) == before:
        raise SystemExit(3)
    outside = counts()  # scipy's library starts with its own count (set by the environment, say)
    with backend.parallel_region():
        assert counts() == [1] * len(counts()), counts()
    assert counts() == outside, (counts(), outside)
"""


def test_a_blas_library_loaded_after_the_first_region_is_pinned_by_the_next_one():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", LATE_BLAS], capture_output=True, text=True, timeout=120)
    if result.returncode == 3:
        pytest.skip("scipy brought no BLAS library of its own")
    assert result.returncode == 0, result.stderr


def test_a_blas_limit_of_one_switches_the_pool_off():
    with threadpool_limits(limits=1, user_api="blas"):
        backend = NumpyBackend()
        with backend.parallel_region():
            assert [(a, b) for a, b, _ in record_parts(backend, 10)] == [(0, 10)]


def test_a_region_is_left_even_when_its_work_fails():
    backend = NumpyBackend(threads=2)
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != 2:
            pytest.skip("no BLAS library whose threads threadpoolctl can set")
        with pytest.raises(ValueError), backend.parallel_region():
            raise ValueError("boom")
        assert blas_threads() == 2


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_whole_number_of_at_least_one(threads):
    with pytest.raises(ValueError, match="threads must be None or a whole number >= 1"):
        NumpyBackend(threads=threads)


def _split_in_child(_):
    backend = NumpyBackend(threads=2)
    with backend.parallel_region():
        return [(a, b) for a, b, _ in record_parts(backend, 6)]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_starts_its_own_threads():
    backend = NumpyBackend(threads=2)
    with backend.parallel_region():
        record_parts(backend, 4)  # the parent's pool is running
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.map(_split_in_child, [0], chunksize=1) == [[(0, 3), (3, 6)]]


def test_keeping_freed_memory_can_be_asked_twice():
    keep_freed_memory()
    keep_freed_memory()
    assert np.ones(1 << 22).sum() == 1 << 22


# -- the threaded layers against the unthreaded ones -----------------------------------------------------


def layer_pass(make, backend, x, dy, train=True):
    layer = make(backend)
    with backend.parallel_region():
        y, saved = layer.forward(x, train=train)
        dx, grads = layer.backward(saved, dy) if train else (None, {})
    return y, dx, grads


LAYERS = {
    "conv taps": (lambda b: Conv2D(1, 8, 3, rng=0, backend=b, dtype="float64"), (9, 1, 28, 28)),
    "conv windows": (
        lambda b: Conv2D(4, 8, 3, stride=2, padding=1, rng=0, backend=b, dtype="float64"), (9, 4, 27, 26)
    ),
    "pool even": (lambda b: MaxPool2D(2, backend=b, dtype="float64"), (9, 16, 26, 26)),
    "pool odd": (lambda b: MaxPool2D(2, backend=b, dtype="float64"), (9, 16, 27, 25)),
    "relu": (lambda b: ReLU(backend=b, dtype="float64"), (9, 16, 26, 26)),
    "batch norm 2d": (lambda b: BatchNorm2D(16, backend=b, dtype="float64"), (9, 16, 26, 26)),
    "batch norm 1d": (lambda b: BatchNorm1D(4096, backend=b, dtype="float64"), (33, 4096)),
}  # fmt: skip


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("train", [True, False])
def test_threaded_layers_give_the_unthreaded_numbers_to_the_bit(rng, name, train):
    make, shape = LAYERS[name]
    x = np.round(rng.standard_normal(shape) * 2) / 2  # a coarse grid: pooling ties are frequent
    probe = make(NumpyBackend(threads=1))
    dy = rng.standard_normal(probe(x).shape)
    one = layer_pass(make, NumpyBackend(threads=1), x, dy, train)
    three = layer_pass(make, NumpyBackend(threads=3), x, dy, train)
    assert np.array_equal(one[0], three[0]), f"{name}: the forward differs with three threads"
    if train:
        assert np.array_equal(one[1], three[1]), f"{name}: the input gradient differs with three threads"
        for key in one[2]:
            assert np.array_equal(one[2][key], three[2][key]), (
                f"{name}: grad {key} differs with three threads"
            )


class SmallBlocks(NumpyBackend):
    def cache_block(self, n, item_bytes):  # blocks of two images: the blocked convolution at test sizes
        return min(n, 2)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels", [(4, 8), (8, 4)])  # widening folds dx, narrowing gathers it
def test_the_blocked_convolution_gives_the_unthreaded_numbers_to_the_bit(rng, train, channels):
    def make(backend):
        return Conv2D(*channels, 3, padding="same", rng=0, backend=backend, dtype="float64")

    x = rng.standard_normal((9, channels[0], 12, 11))
    dy = rng.standard_normal((9, channels[1], 12, 11))
    one = layer_pass(make, SmallBlocks(threads=1), x, dy, train)
    three = layer_pass(make, SmallBlocks(threads=3), x, dy, train)
    assert np.array_equal(one[0], three[0])
    if train:
        assert np.array_equal(one[1], three[1])
        assert all(np.array_equal(one[2][key], three[2][key]) for key in one[2])


def train_a_little(threads, images, labels):
    backend = NumpyBackend(threads=threads)
    model = build_model("seed", seed=3, backend=backend)
    optimizer = Adam(model, lr=1e-3)
    with backend.parallel_region():
        sums = []
        for i in range(0, 64, 16):
            loss_sum, _ = train_step(model, optimizer, images[i : i + 16], labels[i : i + 16])
            sums.append(float(backend.to_host(loss_sum)))
    loss, accuracy, predicted = evaluate(model, images, labels, batch_size=32)
    return model.state_dict(), sums, (loss, accuracy, predicted), model.predict_proba(images)


def test_training_with_the_pool_gives_the_numbers_of_training_without_it(rng):
    images = rng.random((64, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 64)
    state1, sums1, eval1, proba1 = train_a_little(1, images, labels)
    state2, sums2, eval2, proba2 = train_a_little(2, images, labels)
    assert sums1 == sums2, "the step losses differ with the pool"
    assert state1.keys() == state2.keys()
    for key in state1:
        assert np.array_equal(state1[key], state2[key]), f"{key} differs after training with the pool"
    assert eval1[:2] == eval2[:2] and np.array_equal(eval1[2], eval2[2])
    assert np.array_equal(proba1, proba2)


def test_folding_each_tap_product_at_once_matches_the_batched_fold(rng):
    w = rng.standard_normal((5, 3, 3, 2))  # (F, C, kh, kw)
    x_shape, stride = (2, 9, 8, 3), 2
    oh, ow = F.conv_output_size(9, 3, stride, 0), F.conv_output_size(8, 2, stride, 0)
    dy = rng.standard_normal((2 * oh * ow, 5))
    expected = ref.col2im_nhwc(np, np.matmul(dy, F.kernel_planes(w)), x_shape, 3, 2, stride)
    got = F.fold_tap_products(np, dy, F.kernel_planes(w), np.zeros(x_shape), 3, 2, stride)
    assert np.array_equal(expected, got)

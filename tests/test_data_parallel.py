"""Data-parallel steps (cnnx.nn.parallel): shards against the whole batch for every layer type, the same
weights for 1, 2 and 3 workers for every preset (processes and threads), resume of a sharded
stochastic run, and a failing or dying worker ending the step with one line and nothing left running."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from test_reentrant import EXAMPLES, REGISTERED, VARIANTS, build

from cnnx.backends import NumpyBackend
from cnnx.backends.comm import WorkerError
from cnnx.nn import build_model
from cnnx.nn.parallel import ShardGroup, owned_ranges
from cnnx.nn.presets import PRESETS
from cnnx.nn.shards import ShardSet, assigned, partition
from cnnx.optim import make_optimizer
from cnnx.training import RunConfig, evaluate, run_training

from helpers import blobs, rel_error

TOL = 1e-12


def test_the_partition_is_fixed_by_the_batch_and_shared_out_in_runs():
    assert partition(128) == [0, 32, 64, 96, 128]
    assert partition(100) == [0, 25, 50, 75, 100]  # ceil(100 / 32) = 4 shards, as even as can be
    assert partition(20) == [0, 20]
    assert [list(assigned(4, 3, r)) for r in range(3)] == [[0], [1], [2, 3]]
    assert [list(assigned(2, 3, r)) for r in range(3)] == [[0], [1], []]  # worker 0 always works
    assert owned_ranges([10, 10, 100, 10], 2) == [range(0, 3), range(3, 4)]


@pytest.mark.parametrize("name", sorted({*EXAMPLES, *VARIANTS}))
def test_shards_give_the_whole_batchs_outputs_and_gradients(name):
    """Every layer type, float64: three shards run as one worker runs them (layer by layer, gradients
    added in shard order) against the batch run whole; batch norm uses the whole batch's statistics."""
    (whole, sharded), backend, x = build(name, NumpyBackend())
    bounds = [0, 1, 4, 6]
    dy = np.random.default_rng(4).standard_normal(whole.forward(x, True)[0].shape)
    (whole_copy, sharded_copy), _, _ = build(name, NumpyBackend())  # fresh streams and buffers
    y, saved = whole_copy.forward(x, True)
    dx, grads = whole_copy.backward(saved, dy)
    shards = ShardSet(bounds, range(3))
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    ys, kept = sharded_copy.forward_shards([x[p] for p in parts], True, shards)
    dxs, shard_grads = sharded_copy.backward_shards(kept, [dy[p] for p in parts], True, shards)
    assert rel_error(np.concatenate(ys), y) <= TOL
    assert rel_error(np.concatenate(dxs), dx) <= TOL
    assert set(grads) == set(shard_grads[0])
    # Relative to the largest gradient of the layer: a gradient that is zero in exact arithmetic (a
    # Dense bias under batch norm) is rounding noise of 1e-16 on both sides, with no relative error.
    scale = max(float(np.abs(grad).max()) for grad in grads.values()) if grads else 1.0
    for key, grad in grads.items():
        total = shard_grads[0][key].copy()
        for own in shard_grads[1:]:
            total += own[key]
        assert np.abs(total - grad).max() <= TOL * scale, key
    for (key, a), (_, b) in zip(whole_copy.named_buffers(), sharded_copy.named_buffers(), strict=True):
        assert rel_error(b, a) <= TOL, key


def test_every_registered_layer_type_is_checked_sharded():
    checked = {name.split(" ")[0] for name in {*EXAMPLES, *VARIANTS}}
    assert set(REGISTERED) <= checked | {"Sequential"}


def _train(preset, workers, kind="processes", steps=2, n=24, dtype="float32", sizes=None):
    model = build_model(preset, seed=0, dtype=dtype)
    optimizer = make_optimizer("adam", model, 1e-3)
    rng = np.random.default_rng(1)
    shape = model.input_shape
    outcomes = []
    with ShardGroup(model, optimizer, max_batch=n, workers=workers, kind=kind, shard_size=8) as group:
        for rows in sizes or [n] * steps:
            x = rng.random((rows, *shape)).astype(dtype)
            y = rng.integers(0, 10, rows)
            loss, correct = group.train_step(x, y, clip=5.0)
            outcomes.append((float(loss), int(correct)))
        logits = group.logits(rng.random((n, *shape)).astype(dtype))
    state = model.state_dict()
    state.update({f"opt/{k}": np.asarray(v) for k, v in optimizer.state_dict(np.asarray).items()})
    return state, outcomes, logits


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_one_two_and_three_workers_give_identical_weights(preset):
    reference, outcomes, logits = _train(preset, 1)
    for workers, kind in ((2, "processes"), (3, "processes"), (3, "threads")):
        state, theirs, their_logits = _train(preset, workers, kind)
        assert theirs == outcomes, (workers, kind)
        assert np.array_equal(their_logits, logits), (workers, kind)
        for key, value in reference.items():
            assert np.array_equal(state[key], value), (preset, workers, kind, key)


@pytest.mark.parametrize("preset", ["seed-dropout", "cnn-bn"])
def test_a_batch_too_small_for_every_worker_leaves_their_streams_and_averages_in_step(preset):
    # A batch of 8 is one shard: the other workers run nothing of it, yet must draw as the first did
    # (dropout) and keep batch norm's running averages, or the next batch would differ.
    sizes = [24, 8, 24, 16]
    reference, outcomes, logits = _train(preset, 1, sizes=sizes)
    for workers, kind in ((3, "processes"), (3, "threads")):
        state, theirs, their_logits = _train(preset, workers, kind, sizes=sizes)
        assert theirs == outcomes and np.array_equal(their_logits, logits), (workers, kind)
        for key, value in reference.items():
            assert np.array_equal(state[key], value), (preset, workers, kind, key)


def test_evaluation_and_predictions_do_not_depend_on_the_workers():
    model = build_model("cnn-bn", seed=0)
    images, labels = blobs(70, seed=0)
    alone = evaluate(model, images, labels.astype(np.int64), 32, workers=1)
    shared = evaluate(model, images, labels.astype(np.int64), 32, workers=3)
    assert alone[:2] == shared[:2] and np.array_equal(alone[2], shared[2])
    x = model._as_inputs(images)
    assert np.array_equal(
        model._probabilities(x, 64, workers=1)[0], model._probabilities(x, 64, workers=2)[0]
    )


def _dataset():
    from cnnx.data import Dataset

    images, labels = blobs(120, seed=2)
    return Dataset(images[:96], labels[:96], images[96:], labels[96:], source="blobs")


def _run(tmp_path, name, epochs, workers, resume=False):
    config = RunConfig(model="cnn-bn", epochs=epochs, batch_size=24, seed=3, workers=workers, shard_size=8,
                       augment="shift=2,flip")  # fmt: skip
    return run_training(config, tmp_path / name, dataset=_dataset(), resume=resume, progress="none")


def test_a_sharded_stochastic_run_resumes_to_the_bit_with_other_workers(tmp_path):
    straight = _run(tmp_path, "straight", 2, 2)
    _run(tmp_path, "resumed", 1, 3)
    resumed = _run(tmp_path, "resumed", 2, 1, resume=True)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    for (key, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(),
                                strict=True):  # fmt: skip
        assert np.array_equal(a, b), key


def _children() -> list[int]:
    """This process's child processes still running (or not yet reaped)."""
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    with open(path) as f:
        return [int(pid) for pid in f.read().split()]


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_an_error_in_one_worker_is_one_line_and_nothing_hangs(kind, monkeypatch):
    model = build_model("seed", seed=0)
    optimizer = make_optimizer("adam", model, 1e-3)
    dense, forward = model.layers[-1], model.layers[-1].forward
    leader = os.getpid()
    import threading

    main = threading.get_ident()

    def fail_in_worker(x, train=True, draws=None):
        if os.getpid() != leader or threading.get_ident() != main:
            raise RuntimeError("boom\nsecond line")
        return forward(x, train, draws)

    monkeypatch.setattr(dense, "forward", fail_in_worker)
    before = set(_children())  # other tests' servers may be running
    x, y = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32), np.zeros(64, np.int64)
    with pytest.raises(WorkerError, match=r"^worker 1 failed: RuntimeError: boom \(at test_data_parallel"):
        with ShardGroup(model, optimizer, max_batch=64, workers=2, kind=kind) as group:
            group.train_step(x, y)
    assert set(_children()) <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("cnnx-shard")]


def test_a_worker_that_dies_ends_the_step_with_one_line(monkeypatch):
    model = build_model("seed", seed=0)
    optimizer = make_optimizer("adam", model, 1e-3)
    dense, forward = model.layers[-1], model.layers[-1].forward
    leader = os.getpid()

    def die_in_worker(x, train=True, draws=None):
        if os.getpid() != leader:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(x, train, draws)

    monkeypatch.setattr(dense, "forward", die_in_worker)
    before = set(_children())  # other tests' servers may be running
    x, y = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32), np.zeros(64, np.int64)
    with pytest.raises(WorkerError, match="^worker process 1 was killed by signal 9$"):
        with ShardGroup(model, optimizer, max_batch=64, workers=2) as group:
            group.train_step(x, y)
    assert set(_children()) <= before
    # the weights came back from shared memory as they were before the step
    assert all(isinstance(p, np.ndarray) for _, p, _ in model.named_parameters())


def test_workers_and_shard_size_are_checked_settings():
    from cnnx.training.settings import SettingError

    for bad in ({"workers": 0}, {"shard_size": 0}, {"workers": 2.5}):
        with pytest.raises(SettingError, match=next(iter(bad))):
            RunConfig(**bad)


class WholeSteps(NumpyBackend):
    """A backend that runs every step whole, as a GPU does."""

    data_parallel = False


def test_a_backend_that_runs_steps_whole_gets_no_group():
    from cnnx.nn.parallel import data_parallel

    model = build_model("seed", backend=WholeSteps(), seed=0)
    with data_parallel(model, max_batch=128, workers=2) as group:
        assert group is None

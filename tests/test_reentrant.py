"""Reentrancy: one layer object runs two shards of a batch at once (forward A, forward B, backward B,
backward A) and gives what the whole batch gives, for every registered layer type. What backward needs
belongs to the call, and a stochastic layer's shards take their rows of the whole batch's draw."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.backends import NumpyBackend
from cnnx.layercheck import EXAMPLES as CHECKED_EXAMPLES
from cnnx.layers import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Residual,
)
from cnnx.nn import Sequential
from cnnx.nn.random import BatchDraws
from cnnx.nn.registry import REGISTRY, build_layer

from helpers import rel_error

TOL = 1e-12
# Shard A is rows [2, 6) and runs first, shard B rows [0, 2): a layer that drew for its shard alone, in
# the order the shards come, would draw other numbers than the whole batch's.
BATCH, CUT = 6, 2
SHARD_A, SHARD_B = slice(CUT, BATCH), slice(0, CUT)


class SmallBlocks(NumpyBackend):
    """The CPU backend with blocks of two images: the blocked convolution at test sizes."""

    def cache_block(self, n, item_bytes):
        return min(n, 2)


def normalised_chain(backend, kw):
    return Sequential([Conv2D(2, 3, 3, rng=0, bias=False, **kw), BatchNorm2D(3, **kw), ReLU(**kw),
                       Flatten(**kw), Dense(3 * 4 * 4, 5, rng=1, **kw), BatchNorm1D(5, **kw)])  # fmt: skip


def example(name):
    """The package's example of the layer type ``name`` (cnnx.layercheck.EXAMPLES), built as a test builds."""
    config, shape = CHECKED_EXAMPLES[name]
    make = lambda b, kw: build_layer({"type": name, "config": config}, rng=0, **kw)  # noqa: E731
    return make, shape


# (build(backend, kw), the per-sample input shape); kw holds the backend and float64. Every registered
# type's example is the one cnnx check-layer checks.
EXAMPLES = {name: example(name) for name in CHECKED_EXAMPLES}
# The other paths a layer may take, each with a backend of its own (None: the test's).
VARIANTS = {
    "Conv2D by tap": (lambda b, kw: Conv2D(1, 3, 3, padding=1, rng=0, **kw), (1, 6, 5), None),
    "Conv2D blocked, dx gathered":
        (lambda b, kw: Conv2D(4, 3, 3, padding="same", rng=0, **kw), (4, 6, 5), SmallBlocks()),
    "Conv2D blocked, dx folded":
        (lambda b, kw: Conv2D(3, 4, 3, stride=2, rng=0, **kw), (3, 7, 7), SmallBlocks()),
    "MaxPool2D 3 by 2": (lambda b, kw: MaxPool2D(3, 2, **kw), (2, 7, 7), None),
    "Dropout on features": (lambda b, kw: Dropout(0.5, **kw), (7,), None),
    "Residual identity": (lambda b, kw: Residual(Sequential([ReLU(**kw)])), (2, 3, 3), None),
    "normalised chain": (normalised_chain, (2, 6, 6), None),
}  # fmt: skip
# Layers whose training output depends on the whole batch: a shard run through forward alone is
# normalised with its own statistics, so they are compared with the shards run one after the other
# (forward_shards gives the whole batch's statistics: tests/test_data_parallel.py).
PER_BATCH = {"BatchNorm1D", "BatchNorm2D", "normalised chain"}
REGISTERED = sorted(name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx."))


def build(name, backend):
    """Two identical layers (weights, buffers and stream states alike) and an input batch for them."""
    make, shape, own = (*EXAMPLES[name], None) if name in EXAMPLES else VARIANTS[name]
    backend = own or backend
    kw = {"backend": backend, "dtype": "float64"}
    layers = [make(backend, kw) for _ in range(2)]
    for layer in layers:
        layer.seed_streams(5)
    x = np.random.default_rng(3).standard_normal((BATCH, *shape)) + 0.1
    return layers, backend, backend.to_device(x, "float64")


def host(backend, arrays):
    return {key: backend.to_host(value) for key, value in arrays.items()}


def interleaved(layer, backend, x, dy):
    """Forward A, forward B, backward B, backward A through ``layer``, each shard with its rows of the
    batch's draws: (y, dx, summed grads) on the host."""
    draws = BatchDraws(BATCH)
    y_a, saved_a = layer.forward(x[SHARD_A], True, draws.shard(SHARD_A.start, SHARD_A.stop))
    y_b, saved_b = layer.forward(x[SHARD_B], True, draws.shard(SHARD_B.start, SHARD_B.stop))
    dx_b, grads_b = layer.backward(saved_b, dy[SHARD_B])
    dx_a, grads_a = layer.backward(saved_a, dy[SHARD_A])
    grads = {key: backend.to_host(grads_a[key]) + backend.to_host(grads_b[key]) for key in grads_a}
    assert set(grads_a) == set(grads_b), "the shards' backwards named different gradients"
    y = np.concatenate([backend.to_host(y_b), backend.to_host(y_a)])  # in row order
    return y, np.concatenate([backend.to_host(dx_b), backend.to_host(dx_a)]), grads


def one_after_the_other(layer, backend, x, dy):
    """Shard A forward and backward, then shard B, through ``layer``: (y, dx, summed grads) on the host."""
    outputs = []
    for rows in (SHARD_A, SHARD_B):
        y, saved = layer.forward(x[rows], True)
        dx, grads = layer.backward(saved, dy[rows])
        outputs.append((backend.to_host(y), backend.to_host(dx), host(backend, grads)))
    (y_a, dx_a, g_a), (y_b, dx_b, g_b) = outputs
    return np.concatenate([y_b, y_a]), np.concatenate([dx_b, dx_a]), {k: g_a[k] + g_b[k] for k in g_a}


def whole(layer, backend, x, dy):
    y, saved = layer.forward(x, True)
    dx, grads = layer.backward(saved, dy)
    return backend.to_host(y), backend.to_host(dx), host(backend, grads)


def assert_same_run(got, expected, what):
    (y, dx, grads), (y0, dx0, grads0) = got, expected
    assert sorted(grads) == sorted(grads0), f"{what}: gradients {sorted(grads)}, expected {sorted(grads0)}"
    errors = {"y": rel_error(y, y0), "dx": rel_error(dx, dx0)}
    errors.update((f"grad {key}", rel_error(grads[key], grads0[key])) for key in grads0)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{what}: {worst} differs by {errors[worst]:.1e} (relative)"


def test_every_registered_layer_type_has_a_reentrancy_example():
    missing = sorted(set(REGISTERED) - set(EXAMPLES))
    assert not missing, f"add {missing} to EXAMPLES in test_reentrant.py, so that their reentrancy is tested"


@pytest.mark.parametrize("name", [n for n in REGISTERED + sorted(VARIANTS) if n not in PER_BATCH])
def test_two_interleaved_shards_through_one_layer_give_the_whole_batch_s_numbers(backend, name):
    (one, twin), backend, x = build(name, backend)
    dy = backend.to_device(np.random.default_rng(4).standard_normal(one(x).shape), "float64")
    expected = whole(twin, backend, x, dy)  # the whole batch, its draws made with draws=None
    assert_same_run(interleaved(one, backend, x, dy), expected, f"{name}: two shards against the whole batch")


@pytest.mark.parametrize("name", sorted(PER_BATCH))
def test_two_interleaved_shards_through_a_batch_norm_give_the_shards_run_one_after_the_other(backend, name):
    # Each shard is normalised with its own statistics; interleaving the two through one object must
    # change nothing: not the outputs, not the gradients, not the running averages.
    (one, twin), backend, x = build(name, backend)
    dy = backend.to_device(np.random.default_rng(4).standard_normal(one(x).shape), "float64")
    expected = one_after_the_other(twin, backend, x, dy)
    assert_same_run(interleaved(one, backend, x, dy), expected, f"{name}: interleaved against one by one")
    buffers = [host(backend, dict(layer.named_buffers())) for layer in (one, twin)]
    moved = [key for key in buffers[1] if rel_error(buffers[0][key], buffers[1][key]) >= TOL]
    assert not moved, f"{name}: interleaving moved the running averages {moved} otherwise"


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_dropout_shards_take_their_rows_of_the_whole_batch_s_mask_and_leave_the_stream_where_it_would_be(p):
    whole_layer, sharded = Dropout(p, dtype="float64"), Dropout(p, dtype="float64")
    for layer in (whole_layer, sharded):
        layer.rng.bit_generator.state = np.random.default_rng(11).bit_generator.state
    x = np.ones((7, 3, 4, 4))
    expected, _ = whole_layer.forward(x)
    draws = BatchDraws(7)
    parts = [sharded.forward(x[a:b], True, draws.shard(a, b))[0] for a, b in ((3, 7), (0, 1), (1, 3))]
    got = np.concatenate([parts[1], parts[2], parts[0]])
    assert np.array_equal(got, expected), (
        f"{int(np.sum(got != expected))} values differ from the whole batch's"
    )
    assert whole_layer.rng.random() == sharded.rng.random(), "the shards left the stream elsewhere"


def test_a_shard_asking_for_rows_it_does_not_hold_is_refused():
    draws = BatchDraws(6).shard(2, 4)
    with pytest.raises(ValueError, match="a shard of 2 rows got 3"):
        Dropout(0.5).forward(np.ones((3, 5), np.float32), True, draws)


def state_of(layer):
    """Every attribute of ``layer`` and its sublayers, by path: the object itself, and for a dict or a
    list (the state tables, a cache, the layers of a Sequential) the objects it holds."""
    state = {}
    for path, part in [("", layer), *layer.named_layers()]:
        for key, value in vars(part).items():
            state[f"{path}:{key}"] = value
            if isinstance(value, (dict, list)):
                state[f"{path}:{key} holds"] = (
                    dict(value) if isinstance(value, dict) else dict(enumerate(value))
                )
    return state


@pytest.mark.parametrize("name", REGISTERED + sorted(VARIANTS))
def test_a_layer_keeps_nothing_about_a_batch_it_ran(name):
    (layer, _), backend, x = build(name, NumpyBackend())
    before = state_of(layer)
    y, saved = layer.forward(x, True, BatchDraws(len(x)))
    after_forward = state_of(layer)
    layer.backward(saved, np.ones(y.shape))
    for when, state in (("forward", after_forward), ("backward", state_of(layer))):
        added = sorted(set(state) - set(before))
        assert not added, f"{name}: the training {when} left {added} on the layer"
        changed = [key for key, value in before.items() if not _same(value, state[key])]
        assert not changed, f"{name}: the training {when} replaced {changed}"


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and a is not b:
        return a.keys() == b.keys() and all(a[k] is b[k] for k in a)
    return a is b

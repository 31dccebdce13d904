"""The fast kernels against naive loops (tests/reference.py) on many randomly drawn shapes, property style.

The shapes come from one seeded generator: every kernel size, stride and padding the layers support in
the report's networks and around them (kernels 1, 3, 5; stride 1, 2; padding 0, 1, 2; pooling windows 2
and 3 with stride 1 and 2), with odd sizes, batch 1 and 1 or 3 channels drawn among the rest. A
coverage test checks that the draw really contains each of these, so a change of seed cannot drop one.
Forward and backward must agree with the loops to 1e-10 relative in float64 and 1e-5 in float32 (the
loops run in float64 on the same rounded inputs), on every usable backend. The optimizers are checked
over several steps against their textbook update rules. Shapes are small: the loops are slow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from cnnx.layers import Conv2D, Dense, MaxPool2D
from cnnx.optim import make_optimizer

import reference as ref
from helpers import rel_error

TOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}
SHAPE_SEED = 2015  # any fixed seed: the coverage test says whether another one still draws every feature


def f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def assert_all_close(errors: dict[str, float], tol: float, what: str) -> None:
    """One assertion over several arrays, naming every one that differs and by how much."""
    bad = {name: f"{err:.2e}" for name, err in errors.items() if not err < tol}
    assert not bad, f"{what}: relative error >= {tol:.0e} in {bad}"


@dataclass(frozen=True)
class ConvCase:
    batch: int
    cin: int
    cout: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int

    def __str__(self) -> str:
        sizes = f"n{self.batch}-c{self.cin}to{self.cout}-{self.h}x{self.w}"
        return f"{sizes}-k{self.kernel}s{self.stride}p{self.padding}"


@dataclass(frozen=True)
class PoolCase:
    batch: int
    channels: int
    h: int
    w: int
    kernel: int
    stride: int

    def __str__(self) -> str:
        return f"n{self.batch}-c{self.channels}-{self.h}x{self.w}-k{self.kernel}s{self.stride}"


@dataclass(frozen=True)
class DenseCase:
    batch: int
    fin: int
    fout: int

    def __str__(self) -> str:
        return f"n{self.batch}-{self.fin}to{self.fout}"


def draw_cases():
    """Every (kernel, stride, padding) of the grid once, the other sizes drawn from one seeded generator."""
    rng = np.random.default_rng(SHAPE_SEED)

    def pick(*choices) -> int:
        return int(rng.choice(choices))

    conv = []
    for kernel, stride, padding in itertools.product((1, 3, 5), (1, 2), (0, 1, 2)):
        low = max(1, kernel - 2 * padding)  # the smallest input the kernel fits
        h, w = (int(v) for v in rng.integers(low, low + 7, size=2))
        conv.append(ConvCase(pick(1, 2), pick(1, 3), pick(1, 2, 4), h, w, kernel, stride, padding))
    pool = []
    for kernel, stride, _ in itertools.product((2, 3), (1, 2), range(3)):
        h, w = (int(v) for v in rng.integers(kernel, kernel + 7, size=2))
        pool.append(PoolCase(pick(1, 2), pick(1, 3), h, w, kernel, stride))
    dense = [DenseCase(pick(1, 2, 5), pick(1, 3, 7), pick(1, 4, 10)) for _ in range(8)]
    return conv, pool, dense


CONV_CASES, POOL_CASES, DENSE_CASES = draw_cases()


def test_the_drawn_shapes_cover_every_required_feature():
    def out(size, kernel, stride, padding=0):
        return (size + 2 * padding - kernel) / stride + 1

    features = {
        "conv kernels 1, 3, 5": {c.kernel for c in CONV_CASES} >= {1, 3, 5},
        "conv stride 2": any(c.stride == 2 for c in CONV_CASES),
        "conv padding 1 and 2": {c.padding for c in CONV_CASES} >= {1, 2},
        "conv batch 1": any(c.batch == 1 for c in CONV_CASES),
        "conv channels 1 and 3": {c.cin for c in CONV_CASES} >= {1, 3},
        "conv odd sizes": any(c.h % 2 or c.w % 2 for c in CONV_CASES),
        "conv floor mode drops a partial window": any(
            out(c.h, c.kernel, c.stride, c.padding) % 1 for c in CONV_CASES
        ),
        "pool windows 2 and 3 with stride 1 and 2": {(c.kernel, c.stride) for c in POOL_CASES}
        >= {(2, 1), (2, 2), (3, 1), (3, 2)},
        "pool batch 1, channels 1 and 3": any(c.batch == 1 for c in POOL_CASES)
        and {c.channels for c in POOL_CASES} >= {1, 3},
        "pool odd sizes dropping a partial window": any(
            (c.h % 2 or c.w % 2) and out(c.h, c.kernel, c.stride) % 1 for c in POOL_CASES
        ),
        "dense batch 1 and one input feature": any(c.batch == 1 for c in DENSE_CASES)
        and any(c.fin == 1 for c in DENSE_CASES),
    }
    missing = [name for name, covered in features.items() if not covered]
    assert not missing, f"seed {SHAPE_SEED} draws no case for: {missing}"


# -- Conv2D -------------------------------------------------------------------------------------------


def make_conv(case: ConvCase, backend, dtype, rng):
    layer = Conv2D(
        case.cin, case.cout, case.kernel, case.stride, case.padding, rng=rng, backend=backend, dtype=dtype
    )
    layer.params["b"][...] = backend.to_device(rng.standard_normal(case.cout), dtype)  # biases start at 0
    x = rng.standard_normal((case.batch, case.cin, case.h, case.w)).astype(dtype)
    return layer, x


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_matches_naive_loops(backend, dtype, rng, case):
    layer, x = make_conv(case, backend, dtype, rng)
    y = backend.to_host(layer(backend.to_device(x, dtype)))
    w, b = backend.to_host(layer.params["W"]), backend.to_host(layer.params["b"])
    expected = ref.conv2d(f64(x), f64(w), f64(b), case.stride, case.padding)
    assert y.shape == expected.shape, f"Conv2D output shape {y.shape}, the loops give {expected.shape}"
    err = rel_error(y, expected)
    assert err < TOL[dtype], f"Conv2D forward {case}: relative error {err:.2e} >= {TOL[dtype]:.0e}"


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_backward_matches_naive_loops(backend, dtype, rng, case):
    layer, x = make_conv(case, backend, dtype, rng)
    y, saved = layer.forward(backend.to_device(x, dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = layer.backward(saved, backend.to_device(dy, dtype))
    dx, w = backend.to_host(dx), backend.to_host(layer.params["W"])
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(f64(x), f64(w), f64(dy), case.stride, case.padding)
    errors = {
        "dx": rel_error(dx, ref_dx),
        "dW": rel_error(backend.to_host(grads["W"]), ref_dw),
        "db": rel_error(backend.to_host(grads["b"]), ref_db),
    }
    assert_all_close(errors, TOL[dtype], f"Conv2D backward {case}")


# -- MaxPool2D ----------------------------------------------------------------------------------------


def pool_forward_backward(case: PoolCase, backend, dtype, x, rng):
    layer = MaxPool2D(case.kernel, case.stride, backend=backend, dtype=dtype)
    y, saved = layer.forward(backend.to_device(x, dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _ = layer.backward(saved, backend.to_device(dy, dtype))
    return backend.to_host(y), dy, backend.to_host(dx)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d_forward_and_backward_match_naive_loops(backend, dtype, rng, case):
    x = rng.standard_normal((case.batch, case.channels, case.h, case.w)).astype(dtype)
    y, dy, dx = pool_forward_backward(case, backend, dtype, x, rng)
    ref_y, _ = ref.maxpool2d(f64(x), case.kernel, case.stride)
    ref_dx = ref.maxpool2d_backward(f64(x), case.kernel, case.stride, f64(dy))
    assert y.shape == ref_y.shape, f"MaxPool2D output shape {y.shape}, the loops give {ref_y.shape}"
    assert_all_close({"y": rel_error(y, ref_y), "dx": rel_error(dx, ref_dx)}, TOL[dtype], f"MaxPool2D {case}")


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d_sends_tied_gradients_to_the_first_maximum_like_the_loops(backend, dtype, rng, case):
    # Three distinct values on the whole input: most windows hold a tie, often at their maximum.
    x = rng.integers(0, 3, (case.batch, case.channels, case.h, case.w)).astype(dtype)
    _, dy, dx = pool_forward_backward(case, backend, dtype, x, rng)
    ref_dx = ref.maxpool2d_backward(f64(x), case.kernel, case.stride, f64(dy))
    moved = int(np.sum((dx != 0) != (ref_dx != 0)))
    err = rel_error(dx, ref_dx)
    assert moved == 0 and err < TOL[dtype], (
        f"MaxPool2D {case} with ties: {moved} input positions get a gradient the first-maximum rule "
        f"does not give them (or lose one); relative error {err:.2e}"
    )


# -- Dense --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_dense_forward_and_backward_match_naive_loops(backend, dtype, rng, case):
    layer = Dense(case.fin, case.fout, rng=rng, backend=backend, dtype=dtype)
    layer.params["b"][...] = backend.to_device(rng.standard_normal(case.fout), dtype)
    x = rng.standard_normal((case.batch, case.fin)).astype(dtype)
    y, saved = layer.forward(backend.to_device(x, dtype))
    y = backend.to_host(y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = layer.backward(saved, backend.to_device(dy, dtype))
    dx = backend.to_host(dx)
    w, b = f64(backend.to_host(layer.params["W"])), f64(backend.to_host(layer.params["b"]))
    ref_dx, ref_dw, ref_db = ref.dense_backward(f64(x), w, f64(dy))
    errors = {
        "y": rel_error(y, ref.dense(f64(x), w, b)),
        "dx": rel_error(dx, ref_dx),
        "dW": rel_error(backend.to_host(grads["W"]), ref_dw),
        "db": rel_error(backend.to_host(grads["b"]), ref_db),
    }
    assert_all_close(errors, TOL[dtype], f"Dense {case}")


# -- optimizers ---------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": ({"lr": 0.1}, lambda: ref.TextbookSGD(lr=0.1)),
    "momentum": ({"lr": 0.1, "beta": 0.9}, lambda: ref.TextbookMomentum(lr=0.1, beta=0.9)),
    "adam": ({"lr": 0.01}, lambda: ref.TextbookAdam(lr=0.01)),
    # Momentum in the report's averaged form is classical heavy-ball momentum with lr * (1 - beta).
    "momentum-as-heavy-ball": ({"lr": 0.1, "beta": 0.9}, lambda: ref.TextbookHeavyBall(lr=0.01, beta=0.9)),
}
STEPS = 6


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_follows_its_textbook_rule_over_several_steps(backend, dtype, rng, name):
    kwargs, make_textbook = OPTIMIZERS[name]
    layer = Dense(4, 3, rng=rng, backend=backend, dtype=dtype)
    optimizer = make_optimizer(name.split("-")[0], layer, **kwargs)
    expected = {key: f64(backend.to_host(p)) for key, p in layer.params.items()}
    textbook = {key: make_textbook() for key in layer.params}
    for _ in range(STEPS):
        for key, param in layer.params.items():
            # Gradients of mixed signs and scales, rounded to the dtype the optimizer will see.
            grad = (rng.standard_normal(param.shape) * rng.choice([0.01, 1.0, 10.0])).astype(dtype)
            layer.grads[key] = backend.to_device(grad, dtype)
            expected[key] = textbook[key].step(expected[key], f64(grad))
        optimizer.step()
    errors = {key: rel_error(backend.to_host(p), expected[key]) for key, p in layer.params.items()}
    assert_all_close(errors, TOL[dtype], f"{name} after {STEPS} steps")

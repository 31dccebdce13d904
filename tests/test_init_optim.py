"""Initialisation from seeded host generators, and each optimizer's update against hand-computed steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnx import init
from cnnx.errors import ConfigError
from cnnx.layers import Conv2D, Dense
from cnnx.optim import SGD, Adam, Momentum, make_optimizer


def test_conv_fans_count_channels_times_kernel_area():
    assert init.fans((64, 32, 3, 3)) == (32 * 9, 64 * 9)
    assert init.fans((1600, 128)) == (1600, 128)


def test_xavier_normal_has_the_reports_standard_deviation():
    w = init.xavier_normal((400, 300), np.random.default_rng(0))
    assert w.std() == pytest.approx(math.sqrt(2 / 700), rel=0.01)
    assert abs(w.mean()) < 0.002


def test_he_normal_scales_by_fan_in_only():
    w = init.he_normal((64, 32, 3, 3), np.random.default_rng(0))
    assert w.std() == pytest.approx(math.sqrt(2 / 288), rel=0.02)


def test_same_seed_gives_identical_weights_and_zero_biases(backend):
    a = Conv2D(3, 8, 3, rng=7, backend=backend)
    b = Conv2D(3, 8, 3, rng=7)
    assert np.array_equal(backend.to_host(a.params["W"]), b.params["W"])
    assert not backend.to_host(a.params["b"]).any()


def test_unknown_initialisation_is_refused():
    with pytest.raises(ConfigError, match="Dense init must be one of xavier, he, got 'uniform'"):
        Dense(2, 2, init="uniform")


class OneParam:
    """The smallest optimizer target: one parameter and its gradient on a backend."""

    def __init__(self, backend, value, grad):
        self.xp = backend.xp
        self.p = backend.to_device(np.array(value, dtype=np.float64), "float64")
        self.g = backend.to_device(np.array(grad, dtype=np.float64), "float64")

    def named_parameters(self):
        yield "p", self.p, self.g


def test_sgd_step_is_lr_times_gradient(backend):
    target = OneParam(backend, [1.0, -2.0], [0.5, 4.0])
    SGD(target, lr=0.1).step()
    assert np.allclose(backend.to_host(target.p), [0.95, -2.4], rtol=1e-15)


def test_momentum_keeps_an_exponential_average_of_gradients(backend):
    target = OneParam(backend, [1.0], [1.0])
    opt = Momentum(target, lr=0.1, beta=0.9)
    opt.step()  # m = 0.1 -> p = 1 - 0.01 = 0.99
    target.g[...] = backend.to_device(np.array([3.0]), "float64")
    opt.step()  # m = 0.9*0.1 + 0.1*3 = 0.39 -> p = 0.99 - 0.039 = 0.951
    assert backend.to_host(target.p)[0] == pytest.approx(0.951, rel=1e-14)


def test_adam_first_step_moves_each_weight_by_about_lr(backend):
    # With bias correction the first step is lr * g / (|g| + eps): size lr whatever the gradient's scale.
    g = np.array([1e-3, -5.0, 200.0])
    target = OneParam(backend, [0.0, 0.0, 0.0], g)
    Adam(target, lr=0.01).step()
    assert np.allclose(backend.to_host(target.p), -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12, atol=0)


def test_adam_second_step_matches_a_hand_computation(backend):
    target = OneParam(backend, [1.0], [2.0])
    opt = Adam(target, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    opt.step()
    target.g[...] = backend.to_device(np.array([-1.0]), "float64")
    opt.step()
    m = 0.9 * (0.1 * 2.0) + 0.1 * -1.0
    v = 0.999 * (0.001 * 4.0) + 0.001 * 1.0
    first = 0.1 * 2.0 / (2.0 + 1e-8)
    expected = 1.0 - first - 0.1 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)
    assert backend.to_host(target.p)[0] == pytest.approx(expected, rel=1e-13)


def test_optimizer_state_round_trips_through_host_arrays(backend):
    target = OneParam(backend, [1.0, 2.0], [0.3, -0.1])
    opt = Adam(target, lr=0.01)
    opt.step()
    state = opt.state_dict(backend.to_host)
    assert state["steps"] == 1 and set(state) == {"steps", "m/p", "v/p"}
    clone_target = OneParam(backend, backend.to_host(target.p), [0.3, -0.1])
    clone = Adam(clone_target, lr=0.01)
    clone.load_state_dict(state, lambda a: backend.to_device(a, "float64"))
    opt.step()
    clone.step()
    assert np.array_equal(backend.to_host(target.p), backend.to_host(clone_target.p))


@pytest.mark.parametrize("lr", [0, -1, float("nan"), float("inf")])
def test_a_nonsense_learning_rate_is_refused(lr):
    with pytest.raises(ConfigError, match="learning rate"):
        SGD(Dense(2, 2), lr=lr)


def test_optimizers_are_found_by_name():
    assert isinstance(make_optimizer("ADAM", Dense(2, 2)), Adam)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", Dense(2, 2))

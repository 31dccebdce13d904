"""Weight initialisation, drawn on the host from a seeded generator so every backend gets the same bits."""

from __future__ import annotations

import math

import numpy as np  # host: weights are drawn here, then moved to the device by the layer

SCHEMES = ("xavier", "he")


def make_rng(seed=None) -> np.random.Generator:  # host
    """A NumPy Generator from a seed, or the Generator itself when one is passed."""
    if isinstance(seed, np.random.Generator):  # host
        return seed
    return np.random.default_rng(seed)  # host


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: Dense (in, out); Conv2D (out, in, kh, kw) counts in*kh*kw, out*kh*kw."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    raise ValueError(f"no fan rule for a weight of shape {shape}")


def xavier_normal(shape, rng) -> np.ndarray:  # host
    """Glorot/Xavier normal as the original report states it: N(0, 1) * sqrt(2 / (fan_in + fan_out)).

    Mathematics: docs/math.md#xavier-glorot-normal
    """
    fan_in, fan_out = fans(shape)
    return make_rng(rng).standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def he_normal(shape, rng) -> np.ndarray:  # host
    """He/Kaiming normal for ReLU networks: N(0, 1) * sqrt(2 / fan_in).

    Mathematics: docs/math.md#he-normal
    """
    fan_in, _ = fans(shape)
    return make_rng(rng).standard_normal(shape) * math.sqrt(2.0 / fan_in)


def initial_weight(scheme: str, shape, rng) -> np.ndarray:  # host
    """Draw a weight with the named scheme ("xavier" or "he") in float64 on the host.

    Mathematics: docs/math.md#initialisation
    """
    if scheme == "xavier":
        return xavier_normal(shape, rng)
    if scheme == "he":
        return he_normal(shape, rng)
    raise ValueError(f"unknown initialisation {scheme!r}: choose one of {', '.join(SCHEMES)}")

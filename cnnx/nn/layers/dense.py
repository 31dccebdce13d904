"""Fully connected layer."""

from __future__ import annotations

from cnnx.checks import whole_number
from cnnx.errors import ConfigError

from ..registry import INIT, Flag, Size, register_layer
from .base import Layer


@register_layer(
    fields={"in_features": Size(), "out_features": Size(), "init": INIT, "bias": Flag()},
    parameters=lambda c: (c["in_features"] + bool(c.get("bias", True))) * c["out_features"],
)
class Dense(Layer):
    """y = x @ W + b for inputs (N, in_features); W is (in_features, out_features), b (out_features,)
    (no b with ``bias=False``: before a batch norm, which would cancel it)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init: str = "xavier",
        bias: bool = True,
        rng=None,
        backend=None,
        dtype="float32",
    ):
        super().__init__(backend=backend, dtype=dtype)
        self.in_features = whole_number("Dense", "in_features", in_features)
        self.out_features = whole_number("Dense", "out_features", out_features)
        self.init = init  # an unknown scheme is refused by initial_weight below
        self.params["W"] = self._new_weight((self.in_features, self.out_features), init, rng)
        if not isinstance(bias, bool):
            raise ValueError(f"Dense bias must be true or false, got {bias!r}")
        self.bias = bias
        if bias:
            self.params["b"] = self._zeros((self.out_features,))

    def forward(self, x, train=True, draws=None):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Dense expects inputs (N, {self.in_features}), got {tuple(x.shape)}")
        y = x @ self.params["W"]
        if self.bias:
            y += self.params["b"]  # in place: one temporary fewer
        return y, (x if train else None)

    def backward(self, x, dy, need_dx=True):
        grads = {"W": x.T @ dy}
        if self.bias:
            grads["b"] = dy.sum(axis=0)
        return (dy @ self.params["W"].T if need_dx else None), grads

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ConfigError(
                f"Dense expects {self.in_features} features per sample, got shape {input_shape}"
            )
        return (self.out_features,)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init,
                "bias": self.bias}  # fmt: skip

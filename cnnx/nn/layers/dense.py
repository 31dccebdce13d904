"""Fully connected layer."""

from __future__ import annotations

from cnnx.errors import ConfigError

from ..registry import INIT, Flag, Size, register_layer
from .base import Layer


def _param_shapes(config) -> dict:
    """W (in_features, out_features), then b (out_features,) unless ``bias`` is off."""
    shapes = {"W": (config["in_features"], config["out_features"])}
    return {**shapes, "b": (config["out_features"],)} if config["bias"] else shapes


def _output_shape(config, input_shape) -> tuple[int, ...]:
    """(out_features,) for an input of (in_features,)."""
    if input_shape != (config["in_features"],):
        raise ConfigError(
            f"Dense expects {config['in_features']} features per sample, got shape {input_shape}"
        )
    return (config["out_features"],)


@register_layer(
    fields={"in_features": Size(), "out_features": Size(), "init": INIT, "bias": Flag()},
    param_shapes=_param_shapes,
    output_shape=_output_shape,
)
class Dense(Layer):
    """y = x @ W + b for inputs (N, in_features); W is (in_features, out_features), b (out_features,)
    (no b with ``bias=False``: before a batch norm, which would cancel it).

    Mathematics: docs/math.md#dense
    """

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
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.init, self.bias = init, bias
        shapes = self.param_shapes()
        self.params["W"] = self._new_weight(shapes["W"], init, rng)
        if bias:
            self.params["b"] = self._zeros(shapes["b"])

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

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init,
                "bias": self.bias}  # fmt: skip

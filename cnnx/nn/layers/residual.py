"""A residual connection: the sum of a body of layers and a shortcut."""

from __future__ import annotations

from cnnx.errors import ConfigError

from ..registry import SubLayer, output_shape, register_layer
from .base import Layer


def _summed_shape(config, input_shape) -> tuple[int, ...]:
    """The shape a description's body and shortcut both give (see Residual.output_shape)."""
    body = output_shape(config["body"], input_shape)
    other = input_shape if config["shortcut"] is None else output_shape(config["shortcut"], input_shape)
    if body != other:
        raise ConfigError(f"Residual: the body gives {body} per sample but the shortcut {other}")
    return body


@register_layer(fields={"body": SubLayer(), "shortcut": SubLayer(optional=True)}, output_shape=_summed_shape)
class Residual(Layer):
    """y = body(x) + shortcut(x), the shortcut being the identity when None (He et al., 2016).

    ``body`` and ``shortcut`` are layers (a Sequential for several); both see the same input and must
    give outputs of one shape. The gradient of the sum flows unchanged into both branches, and the
    input gradient is the sum of theirs.

    Mathematics: docs/math.md#residual
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None, *, backend=None, dtype=None):
        backend = body.backend if backend is None else backend
        super().__init__(backend=backend, dtype=body.dtype if dtype is None else dtype)
        for part in (body, shortcut):
            if part is not None and (part.backend is not self.backend or part.dtype != self.dtype):
                raise ConfigError("a Residual's body and shortcut must share its backend and dtype")
        self.body, self.shortcut = body, shortcut

    def children(self):
        parts = {"body": self.body}
        if self.shortcut is not None:
            parts["shortcut"] = self.shortcut
        return parts

    def forward(self, x, train=True, draws=None):
        y, body = self.body.forward(x, train, draws)
        if self.shortcut is None:
            return y + x, ((body, None) if train else None)
        s, shortcut = self.shortcut.forward(x, train, draws)
        return y + s, ((body, shortcut) if train else None)

    def backward(self, saved, dy, need_dx=True):
        dx, grads = self.body.backward(saved[0], dy, need_dx)
        grads = {f"body.{name}": grad for name, grad in grads.items()}
        if self.shortcut is None:
            return (dx + dy if need_dx else None), grads
        ds, shortcut = self.shortcut.backward(saved[1], dy, need_dx)
        grads.update((f"shortcut.{name}", grad) for name, grad in shortcut.items())
        return (dx + ds if need_dx else None), grads

    def forward_shards(self, xs, train, shards):
        ys, body = self.body.forward_shards(xs, train, shards)
        if self.shortcut is None:
            return [y + x for y, x in zip(ys, xs, strict=True)], ((body, None) if train else None)
        ss, shortcut = self.shortcut.forward_shards(xs, train, shards)
        return [y + s for y, s in zip(ys, ss, strict=True)], ((body, shortcut) if train else None)

    def backward_shards(self, saved, dys, need_dx, shards):
        dxs, grads = self.body.backward_shards(saved[0], dys, need_dx, shards)
        grads = [{f"body.{name}": grad for name, grad in own.items()} for own in grads]
        if self.shortcut is None:
            return [(dx + dy if need_dx else None) for dx, dy in zip(dxs, dys, strict=True)], grads
        dss, shortcut = self.shortcut.backward_shards(saved[1], dys, need_dx, shards)
        for mine, theirs in zip(grads, shortcut, strict=True):
            mine.update((f"shortcut.{name}", grad) for name, grad in theirs.items())
        return [(dx + ds if need_dx else None) for dx, ds in zip(dxs, dss, strict=True)], grads

    def output_shape(self, input_shape):
        body = self.body.output_shape(input_shape)
        other = tuple(input_shape) if self.shortcut is None else self.shortcut.output_shape(input_shape)
        if body != other:
            raise ConfigError(f"Residual: the body gives {body} per sample but the shortcut {other}")
        return body

    def trace_shapes(self, input_shape, prefix=""):
        for name, part in self.children().items():
            yield prefix + name, part, part.output_shape(input_shape)
            yield from part.trace_shapes(input_shape, f"{prefix}{name}.")

    def config(self):
        return {
            "body": self.body.describe(),
            "shortcut": None if self.shortcut is None else self.shortcut.describe(),
        }

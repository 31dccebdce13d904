"""The layer contract every layer follows."""

from __future__ import annotations

from collections.abc import Iterator

from cnnx.backends import get_backend
from cnnx.init import initial_weight, make_rng


class Layer:
    """A layer: ``forward(x, train)`` keeps what ``backward(dy)`` needs; ``backward`` returns dx and fills
    ``grads``. ``params`` and ``grads`` are dicts of device arrays with the same keys.

    Layers built standalone live on the CPU backend in float32; ``backend=`` ("cpu", "gpu", "auto" or a
    Backend) and ``dtype=`` choose otherwise. Shapes in ``output_shape`` leave out the batch axis.
    """

    def __init__(self, *, backend=None, dtype="float32"):
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.dtype = self.xp.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"layers compute in a floating dtype, not {self.dtype}")
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x, train: bool = True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, train: bool = True):
        return self.forward(x, train)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample output shape for a per-sample input shape (no batch axis)."""
        return tuple(input_shape)

    def config(self) -> dict:
        """Constructor arguments that rebuild this layer (JSON-friendly); weights are not included."""
        return {}

    def named_parameters(self) -> Iterator[tuple[str, object, object]]:
        """Yield (key, parameter, gradient) for each parameter; the gradient is None before backward."""
        for key, value in self.params.items():
            yield key, value, self.grads.get(key)

    def _new_weight(self, shape, init: str, rng):
        host = initial_weight(init, shape, make_rng(rng)).astype(self.dtype)
        return self.backend.to_device(host, self.dtype)

    def _zeros(self, shape):
        return self.xp.zeros(shape, dtype=self.dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

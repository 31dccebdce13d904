"""The layer contract every layer follows."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

from cnnx.backends import get_backend
from cnnx.errors import ConfigError
from cnnx.init import initial_weight, make_rng


def whole_number(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int when it is a whole number >= ``minimum``, else a ConfigError naming it.

    True and False are refused: they are ints to Python, but a size of True is a mistake, not a 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{owner} {name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


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

    def backward_params(self, dy) -> None:
        """Fill ``grads`` from ``dy`` without returning dx, for a layer whose input gradient nobody needs
        (the first trained layer of a model: the images are not trained). Layers that can skip work for
        it override this; by default it is a full backward."""
        self.backward(dy)

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

"""The layer contract every layer follows, containers included."""

from __future__ import annotations

from collections.abc import Iterator

from cnnx.backends import get_backend
from cnnx.errors import CheckpointError

from ..init import initial_weight, make_rng
from ..random import derive_rng, generator_from_state, pack_state
from ..registry import REGISTRY, describe, output_shape, param_shapes


class Layer:
    """A layer: ``forward(x, train)`` keeps what ``backward(dy)`` needs; ``backward`` returns dx and fills
    ``grads``.

    State, all keyed by name:

    - ``params``: trained device arrays; ``grads`` has the same keys once a backward has run;
    - ``buffers``: device arrays that are saved but not trained (running averages, say);
    - ``streams``: host random generators (:meth:`random_stream`), one per kind of draw.

    A container holds sublayers (:meth:`children`); names nest with dots, ``"4.body.0.W"``, and every
    walk below (parameters, buffers, streams, layers) visits a layer's own state, then its children's in
    order. ``train=True`` selects training behaviour (batch statistics, random masks) and keeps what
    ``backward`` needs; ``train=False`` is evaluation.

    Layers built standalone live on the CPU backend in float32; ``backend=`` ("cpu", "gpu", "auto" or a
    Backend) and ``dtype=`` choose otherwise. Shapes in ``output_shape`` leave out the batch axis. A
    layer type is declared once with :func:`cnnx.nn.registry.register_layer`.
    """

    layer_type = "Layer"  # set by register_layer

    def __init__(self, *, backend=None, dtype="float32"):
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.dtype = self.xp.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"layers compute in a floating dtype, not {self.dtype}")
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.streams: dict = {}

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
        """The per-sample output shape for a per-sample input shape (no batch axis), as the layer's
        registration declares it (see :func:`cnnx.nn.registry.register_layer`); ConfigError where the
        layer does not fit that input. An unregistered layer keeps the input's shape."""
        if self.layer_type not in REGISTRY:
            return tuple(input_shape)
        return output_shape(self.describe(), input_shape)

    output_shape.asks_the_registry = True

    def config(self) -> dict:
        """Constructor arguments that rebuild this layer (JSON-friendly, the registered fields);
        weights are not included. A container gives its sublayers as descriptions."""
        return {}

    def trace_shapes(self, input_shape, prefix: str = "") -> Iterator[tuple[str, Layer, tuple]]:
        """Yield (path, sublayer, its per-sample output shape) for every sublayer at any depth, in the
        order they run, for this layer's ``input_shape``. A plain layer has none; containers override."""
        return iter(())

    # -- sublayers and named state ----------------------------------------------------------------

    def children(self) -> dict[str, Layer]:
        """The sublayers by name, in the order they run (none for a plain layer)."""
        return {}

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """Yield (path, layer) for every sublayer at any depth, parents before their children."""
        for name, child in self.children().items():
            path = prefix + name
            yield path, child
            yield from child.named_layers(path + ".")

    def _named(self, table: str, prefix: str) -> Iterator[tuple[str, object]]:
        yield from ((prefix + key, value) for key, value in getattr(self, table).items())
        for name, child in self.children().items():
            yield from child._named(table, f"{prefix}{name}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, object, object]]:
        """Yield (name, parameter, gradient) at every depth; the gradient is None before backward."""
        yield from ((prefix + key, value, self.grads.get(key)) for key, value in self.params.items())
        for name, child in self.children().items():
            yield from child.named_parameters(f"{prefix}{name}.")

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        """Yield (name, buffer) at every depth."""
        return self._named("buffers", prefix)

    def named_streams(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        """Yield (name, host generator) at every depth."""
        return self._named("streams", prefix)

    def has_parameters(self) -> bool:
        return any(True for _ in self.named_parameters())

    def parameter_count(self) -> int:
        return sum(int(p.size) for _, p, _ in self.named_parameters())

    def state_dict(self) -> dict:
        """Every parameter, buffer and random stream as a host array of its own, by full name (a stream
        as its packed state, see :mod:`cnnx.nn.random`): changing the dict never changes the layer."""
        state = {}
        for name, value in (*((n, p) for n, p, _ in self.named_parameters()), *self.named_buffers()):
            state[name] = self.backend.to_host(value).copy()  # a copy even where to_host could alias
        state.update((name, pack_state(rng)) for name, rng in self.named_streams())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy host arrays from :meth:`state_dict` into the layer: the same names, the same shapes
        (parameters and floating buffers are cast to the layer's dtype). CheckpointError names the first
        mismatch; what the check refuses changes nothing."""
        targets = {name: p for name, p, _ in self.named_parameters()} | dict(self.named_buffers())
        streams = dict(self.named_streams())
        expected = set(targets) | set(streams)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise CheckpointError(f"the state does not match the architecture (missing {missing}, "
                                  f"unexpected {extra})")  # fmt: skip
        for name, target in targets.items():
            value = state[name]
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{name} has shape {tuple(value.shape)}, the layer needs {target.shape}"
                )
        generators = {}
        for name in streams:
            try:
                generators[name] = generator_from_state(state[name])
            except ValueError as exc:
                raise CheckpointError(f"random stream {name}: {exc}") from None
        for name, target in targets.items():
            target[...] = self.backend.to_device(state[name], target.dtype)
        for name, rng in streams.items():
            rng.bit_generator.state = generators[name].bit_generator.state

    def seed_streams(self, seed: int) -> None:
        """Reseed every random stream from ``seed`` and its full name: the same seed gives the same
        draws wherever the layer sits, and no two streams of a model share their numbers."""
        for name, rng in self.named_streams():
            rng.bit_generator.state = derive_rng(seed, f"layer/{name}").bit_generator.state

    # -- helpers for layer authors ----------------------------------------------------------------

    def random_stream(self, name: str):
        """Create this layer's host generator ``name`` (seeded from the name alone until the model
        that holds the layer calls :meth:`seed_streams`); it is saved and restored with the model."""
        if name in self.params or name in self.buffers:
            raise ValueError(f"{type(self).__name__}: {name!r} already names a parameter or buffer")
        rng = self.streams[name] = derive_rng(0, f"layer/{name}")
        return rng

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of this layer's own parameters by name, as its registration declares them for its
        ``config()``: the constructor makes its parameters in these shapes (and the counts read them)."""
        return param_shapes(self)

    def _new_weight(self, shape, init: str, rng):
        host = initial_weight(init, shape, make_rng(rng)).astype(self.dtype)
        return self.backend.to_device(host, self.dtype)

    def _zeros(self, shape):
        return self.xp.zeros(shape, dtype=self.dtype)

    def describe(self) -> dict:
        """This layer's description, ``{"type": ..., "config": ...}``."""
        return describe(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

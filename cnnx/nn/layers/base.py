"""The layer contract every layer follows, containers included."""

from __future__ import annotations

from collections.abc import Iterator

from cnnx.backends import get_backend
from cnnx.errors import CheckpointError

from ..init import initial_weight, make_rng
from ..random import derive_rng, generator_from_state, pack_state
from ..registry import REGISTRY, describe, output_shape, param_shapes


class Layer:
    """A layer: ``forward`` returns its output and what its ``backward`` needs; ``backward`` returns the
    input gradient and the parameter gradients.

        y, saved = layer.forward(x, train=True, draws=None)
        dx, grads = layer.backward(saved, dy, need_dx=True)
        y = layer(x)  # evaluation: layer.forward(x, train=False), the output only

    ``saved`` belongs to the call (None in evaluation): a layer keeps nothing about a batch, so one
    layer object can run several batches, or shards of one, at once. ``grads`` is a dict keyed like
    :meth:`named_parameters` relative to the layer (``"W"``; a container's ``"body.0.W"``), and
    ``need_dx=False`` skips the input gradient (the first trained layer of a model: the images are not
    trained). ``train=True`` selects training behaviour (batch statistics, random masks); a batch norm
    still moves its running averages there. ``draws`` (a :class:`cnnx.nn.random.BatchDraws`) says that
    ``x`` is a shard of a batch: a stochastic layer then takes its rows of the batch's draw (see
    :meth:`draw`); containers pass it down.

    State, all keyed by name:

    - ``params``: trained device arrays; ``grads`` has the same keys once :meth:`set_grads` stored a
      backward's gradients (the optimizer reads them there);
    - ``buffers``: device arrays that are saved but not trained (running averages, say);
    - ``streams``: host random generators (:meth:`random_stream`), one per kind of draw.

    A container holds sublayers (:meth:`children`); names nest with dots, ``"4.body.0.W"``, and every
    walk below (parameters, buffers, streams, layers) visits a layer's own state, then its children's in
    order.

    Layers built standalone live on the CPU backend in float32; ``backend=`` ("cpu", "gpu", "auto" or a
    Backend) and ``dtype=`` choose otherwise. Shapes in ``output_shape`` leave out the batch axis. A
    layer type is declared once with :func:`cnnx.nn.registry.register_layer`.
    """

    layer_type = "Layer"  # set by register_layer
    # A Sequential runs a layer that commutes with max pooling after a max pooling that follows it
    # directly (see Sequential.running_order): the same numbers, to the bit, for less work.
    max_pooling = False  # the output is the maximum of windows of the input
    commutes_with_max_pooling = False  # elementwise, and exactly the same run after a max pooling

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

    def forward(self, x, train: bool = True, draws=None):
        """``(y, saved)``: the output for ``x`` and what :meth:`backward` needs (None unless ``train``)."""
        raise NotImplementedError

    def backward(self, saved, dy, need_dx: bool = True):
        """``(dx, grads)`` for the gradient ``dy`` of the output of the forward that gave ``saved``: the
        input gradient (None without ``need_dx``) and a dict of parameter gradients."""
        raise NotImplementedError

    def forward_shards(self, xs: list, train: bool, shards) -> tuple[list, list]:
        """``(ys, saved)`` for this worker's shards of one batch: ``xs`` holds one input per shard of
        ``shards`` (a :class:`cnnx.nn.shards.ShardSet`), ``saved`` what the backward needs (here a list
        with each shard's; a container's is its own, handed back to its :meth:`backward_shards`).
        Each shard runs on its own, with its rows of the batch's draws. A layer that needs the whole
        batch (batch norm) overrides this and its pair, and meets the other workers through
        ``shards``; a container passes the list down."""
        out = [self.forward(x, train, draws) for x, draws in zip(xs, shards.shard_draws(), strict=True)]
        return [y for y, _ in out], [kept for _, kept in out]

    def backward_shards(self, saved: list, dys: list, need_dx: bool, shards) -> tuple[list, list]:
        """``(dxs, grads)``: :meth:`backward` for each shard of :meth:`forward_shards`; ``grads`` holds
        one dict per shard (the shards' gradients are added later, in shard order)."""
        out = [self.backward(kept, dy, need_dx) for kept, dy in zip(saved, dys, strict=True)]
        return [dx for dx, _ in out], [grads for _, grads in out]

    def __call__(self, x):
        """The evaluation output for ``x``."""
        return self.forward(x, train=False)[0]

    def set_grads(self, grads: dict) -> None:
        """Store a backward's gradients, by their names relative to this layer, in ``grads`` of the
        layers that own them (at any depth), where the optimizer reads them."""
        owners = {name: (layer, key) for name, layer, key in self._parameter_owners()}
        for name, grad in grads.items():
            layer, key = owners[name]
            layer.grads[key] = grad

    def _parameter_owners(self, prefix: str = ""):
        yield from ((prefix + key, self, key) for key in self.params)
        for name, child in self.children().items():
            yield from child._parameter_owners(f"{prefix}{name}.")

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
        """Yield (name, parameter, gradient) at every depth; the gradient is None until set_grads."""
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

    def draw(self, draws, name: str, shape: tuple, make):  # host
        """The draw ``make(rng, shape)`` from this layer's stream ``name`` for an input of batch-first
        ``shape``: made here when ``draws`` is None (the input is the whole batch), else this shard's
        rows of the whole batch's draw (see :class:`cnnx.nn.random.BatchDraws`)."""
        rng = self.streams[name]
        return make(rng, tuple(shape)) if draws is None else draws.rows(rng, tuple(shape), make)

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

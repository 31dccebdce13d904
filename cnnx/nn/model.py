"""Sequential: layers applied in order. It is a layer (a container that nests inside others) and, at the
top, the model: input shape, name, summary, predictions, copies across devices and dtypes, saving; and
:func:`build_from_architecture`, which builds one from a checked description."""

from __future__ import annotations

import math

import numpy as np  # host: predictions are returned as host arrays

from cnnx.backends import get_backend
from cnnx.errors import CheckpointError, ConfigError, ResourceError, out_of_memory_errors

from .datainfo import scaled_pixels
from .functional import softmax
from .init import make_rng
from .layers.base import Layer
from .parallel import data_parallel
from .registry import (
    MAX_ACTIVATION,
    SubLayers,
    build_layer,
    check_architecture,
    output_shape,
    register_layer,
    scratch_values,
)
from .saving import write_model

IMAGE_SHAPE = (1, 28, 28)  # a Fashion-MNIST image, what a model takes unless told otherwise
# Bytes of activations an inference batch may hold (predict_proba, cnnx.training.evaluate): batches are
# cut smaller than asked where a model's images need more (see Sequential.inference_batch_size).
INFERENCE_BYTES = 512 << 20


def _chained_shape(config, input_shape) -> tuple[int, ...]:
    """The shape after a description's layers, each taking the one before's output."""
    for entry in config["layers"]:
        input_shape = output_shape(entry, input_shape)
    return tuple(input_shape)


@register_layer(
    fields={"layers": SubLayers()}, output_shape=_chained_shape, not_config=("input_shape", "name")
)
class Sequential(Layer):
    """Layers applied in order; they share one backend and one dtype.

    ``input_shape`` is the per-sample input shape of a whole model (default Fashion-MNIST's 1x28x28).
    Given explicitly, the layers are checked to fit together now, with a clear message; a Sequential
    used inside another layer leaves it out and is checked by the model that holds it. Children are
    named by their index, so parameter names read ``"3.W"`` and, nested, ``"4.body.0.W"``.

    Mathematics: docs/math.md#sequential
    """

    def __init__(
        self, layers: list[Layer], *, input_shape=None, name: str = "custom", backend=None, dtype=None
    ):
        first = layers[0]
        super().__init__(backend=first.backend if backend is None else backend,
                         dtype=first.dtype if dtype is None else dtype)  # fmt: skip
        for layer in layers:
            if layer.backend is not self.backend or layer.dtype != self.dtype:
                raise ConfigError("all layers of a model must share one backend and one dtype")
        self.layers = list(layers)
        self.input_shape = IMAGE_SHAPE if input_shape is None else tuple(input_shape)
        self.name = name
        # What the inputs and outputs mean (a cnnx.nn.datainfo.DataInfo: the data set, its class names,
        # the pixel scaling), when known: a training run sets it, a model file carries it.
        self.data_info = None
        # Layers built by hand get distinct, repeatable streams (their names differ); build_model reseeds
        # them from the run's seed, and a model that holds this one reseeds them under its own names.
        self.seed_streams(0)
        if input_shape is not None:
            self.output_shapes()  # fail now, with a clear message, if the layers do not fit together

    def children(self):
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def forward(self, x, train: bool = True, draws=None):
        """``(y, saved)``: the layers applied in :meth:`running_order`; ``saved`` is the list of what
        each of them saved, in that order (None unless ``train``)."""
        saved = []
        for layer in self.running_order():
            x, kept = layer.forward(x, train, draws)
            saved.append(kept)
        return x, (saved if train else None)

    def forward_shards(self, xs, train, shards):
        """:meth:`forward` for a worker's shards: each layer runs all of them before the next layer does
        (so a batch norm can meet the other workers once), even when this worker has none."""
        saved = []
        for layer in self.running_order():
            xs, kept = layer.forward_shards(xs, train, shards)
            saved.append(kept)
        return xs, (saved if train else None)

    def backward_shards(self, saved, dys, need_dx, shards):
        """:meth:`backward` for a worker's shards, layer by layer; one gradient dict per shard."""
        order = self._running()
        trained = [i for i, (_, layer) in enumerate(order) if layer.has_parameters()]
        grads = [{} for _ in dys]
        if not need_dx and not trained:
            return [None] * len(dys), grads
        first = 0 if need_dx else trained[0]
        for i in range(len(order) - 1, first - 1, -1):
            name, layer = order[i]
            dys, own = layer.backward_shards(saved[i], dys, need_dx or i > first, shards)
            for mine, theirs in zip(grads, own, strict=True):
                mine.update((f"{name}.{key}", grad) for key, grad in theirs.items())
        return dys, grads

    def running_order(self) -> list[Layer]:
        """The layers in the order they run: the declared order, except that a layer that commutes with
        max pooling (a ReLU: it keeps the order of values, and so the same first maximum of each window,
        or a zero gradient where the maximum is not positive) runs after a max pooling that follows it
        directly. It then touches one value per window instead of all of them: the same numbers, to the
        bit, for less work. The layers' class attributes say which they are (see Layer)."""
        return [layer for _, layer in self._running()]

    def _running(self) -> list[tuple[str, Layer]]:
        order = list(self.children().items())
        i = 0
        while i < len(order) - 1:
            if order[i][1].commutes_with_max_pooling and order[i + 1][1].max_pooling:
                order[i], order[i + 1] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
        return order

    def backward(self, saved, dy, need_dx: bool = True):
        """``(dx, grads)``: backpropagate ``dy`` (the loss gradient of the output) through the forward that
        gave ``saved``; the gradients are named by layer index, ``{"3.W": ...}``.

        With ``need_dx=False`` (what a training step asks for) no input gradient is made: the first
        layer with parameters only computes its own gradients, and the parameter-free layers below it
        (a Flatten, say) are not visited. dx is None then.
        """
        order = self._running()
        trained = [i for i, (_, layer) in enumerate(order) if layer.has_parameters()]
        if not need_dx and not trained:
            return None, {}
        first = 0 if need_dx else trained[0]
        grads = {}
        for i in range(len(order) - 1, first - 1, -1):
            name, layer = order[i]
            dy, own = layer.backward(saved[i], dy, need_dx=need_dx or i > first)
            grads.update((f"{name}.{key}", grad) for key, grad in own.items())
        return dy, grads

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def trace_shapes(self, input_shape, prefix=""):
        shape = tuple(input_shape)
        for name, layer in self.children().items():
            out = layer.output_shape(shape)
            yield prefix + name, layer, out
            yield from layer.trace_shapes(shape, f"{prefix}{name}.")
            shape = out

    def output_shapes(self) -> list[tuple[int, ...]]:
        """The per-sample output shape after each layer, for ``input_shape``."""
        return [shape for path, _, shape in self.trace_shapes(self.input_shape) if "." not in path]

    def config(self):
        return {"layers": self.architecture()}

    def architecture(self) -> list[dict]:
        """The layers' descriptions, nested ones included: what the model is rebuilt from."""
        return [layer.describe() for layer in self.layers]

    def summary(self) -> str:
        """A table of layers (nested ones indented under their container), output shapes and parameter
        counts."""
        rows = [("layer", "output shape", "params")]
        for path, layer, shape in self.trace_shapes(self.input_shape):
            depth = path.count(".")
            label = f"{'  ' * depth}{path.rsplit('.', 1)[-1]:>{2 if depth == 0 else 1}} {layer.layer_type}"
            own = sum(int(p.size) for p in layer.params.values())
            count = layer.parameter_count() if layer.children() else own
            rows.append((label, "x".join(map(str, shape)), f"{count:,}"))
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(
            f"{self.name}: {self.parameter_count():,} parameters, input {self.input_shape}, "
            f"{self.dtype}, {self.backend.describe()}"
        )
        return "\n".join(lines)

    def to(self, device=None, dtype=None) -> Sequential:
        """A copy of this model on another backend and/or dtype: the same weights, buffers and random
        streams."""
        copy = build_from_architecture(
            self.architecture(),
            backend=device or self.backend,
            dtype=dtype or self.dtype,
            input_shape=self.input_shape,
            name=self.name,
        )
        copy.load_state_dict(self.state_dict())
        copy.data_info = self.data_info
        return copy

    def activation_values(self) -> int:
        """An upper bound on the values one sample's inference pass holds at once: its input, every
        layer's output at any depth (as if none were freed) and the largest scratch any layer allocates
        besides its output (a convolution's unfolded windows; see :func:`register_layer`)."""
        outputs, scratch = math.prod(self.input_shape), 0
        for _, layer, shape_in, shape_out in _traced(self, self.input_shape):
            outputs += math.prod(shape_out)
            scratch = max(scratch, scratch_values(layer, shape_in, shape_out))
        return outputs + scratch

    def inference_batch_size(self, batch_size: int) -> int:
        """How many images an inference pass takes at once when asked for ``batch_size``: that many, or
        fewer where they would hold more than :data:`INFERENCE_BYTES` of activations, at least one."""
        per_image = self.activation_values() * self.dtype.itemsize
        return max(1, min(batch_size, INFERENCE_BYTES // per_image))

    def out_of_memory(self, doing: str, batch_size: int, exc: BaseException) -> ResourceError:
        """The one-line error for running out of memory (``exc``) while ``doing`` in batches of
        ``batch_size`` images."""
        per_image = self.activation_values() * self.dtype.itemsize
        return ResourceError(
            f"out of memory {doing} in batches of {batch_size:,} images on {self.backend.describe()} "
            f"({type(exc).__name__}); this model holds up to {per_image / 2**20:,.2f} MiB per image"
        )

    def predict_proba(self, images, batch_size: int = 1000) -> np.ndarray:  # host
        """Class probabilities (N, classes) on the host for host images of any batch size: uint8 pixels
        (0-255) or floats in [0, 1], shaped (N, *input_shape) or flat per sample, e.g. (N, 28, 28) or
        (N, 784) for a 1x28x28 model. Computed in batches of ``batch_size`` images, or fewer where the
        model's activations need it (:meth:`inference_batch_size`). Running out of memory all the same
        raises ResourceError."""
        x = self._as_inputs(images)
        size = self.inference_batch_size(batch_size)
        try:
            out = self._probabilities(x, size)
        except out_of_memory_errors() as exc:
            raise self.out_of_memory("predicting", min(size, len(x)), exc) from None
        if not out:
            return np.zeros((0, math.prod(self.output_shapes()[-1])), self.dtype)  # host
        return np.concatenate(out)  # host

    def _probabilities(self, x, batch_size: int, workers: int | None = None) -> list[np.ndarray]:  # host
        out = []
        # the model's workers, shard by shard (none on a GPU)
        with data_parallel(self, max_batch=min(batch_size, max(1, len(x))), workers=workers) as group:
            for start in range(0, len(x), batch_size):
                chunk = x[start : start + batch_size]
                if chunk.dtype == np.uint8:  # host: scale as training does
                    chunk = scaled_pixels(chunk, self.dtype)
                batch = self.backend.to_device(chunk, self.dtype)
                logits = self(batch) if group is None else group.logits(batch)
                out.append(self.backend.to_host(softmax(self.xp, logits, axis=1)))
        return out

    def predict(self, images, batch_size: int = 1000) -> np.ndarray:  # host
        """The most probable class of each image, as host int64 (N,); inputs as :meth:`predict_proba`."""
        return self.predict_proba(images, batch_size).argmax(axis=1).astype(np.int64)  # host

    def _as_inputs(self, images) -> np.ndarray:  # host
        x = np.asarray(images)  # host: the caller's images
        if x.dtype != np.uint8 and x.dtype.kind not in "fiu":  # host
            raise ValueError(f"images must be uint8 pixels or floats in [0, 1], not {x.dtype}")
        if x.dtype != np.uint8 and x.dtype.kind in "iu":  # host
            raise ValueError(f"integer images must be uint8 (0-255), not {x.dtype}")
        per_sample = math.prod(self.input_shape)
        if x.ndim == 0 or (x.ndim >= 1 and x.shape[0] and math.prod(x.shape[1:]) != per_sample):
            raise ValueError(
                f"images of shape {x.shape} do not fit this model's input {self.input_shape} "
                f"({per_sample} values per image)"
            )
        return x.reshape(len(x), *self.input_shape)

    def save(self, path, extra: dict | None = None, meta: dict | None = None):
        """Write the model to one ``.npz`` file atomically (see :mod:`cnnx.nn.saving`); ``extra`` arrays
        and ``meta`` JSON ride along. Returns the path."""
        return write_model(self, path, extra=extra, meta=meta)


def build_from_architecture(
    architecture, *, backend=None, dtype="float32", input_shape=IMAGE_SHAPE, name="custom", rng=None
) -> Sequential:
    """Build a model from its JSON architecture description: a list of layer descriptions
    ``{"type": ..., "config": {...}}`` (containers nest theirs), as :meth:`Sequential.architecture`
    gives and model files store.

    The description is checked against the layer registry first (known types, allowed keys, value
    types, size caps), so nothing unexpected reaches a layer's constructor; then every layer's output
    shape, at any depth, is checked against the activation cap before any weight is drawn. Trained
    layers draw their initial weights from ``rng`` (a seed or Generator) in description order.
    """
    check_architecture(architecture)
    backend, rng = get_backend(backend), make_rng(rng)
    layers = [build_layer(entry, backend=backend, dtype=dtype, rng=rng, path=str(i))
              for i, entry in enumerate(architecture)]  # fmt: skip
    model = Sequential(layers, name=name)
    model.input_shape = tuple(input_shape)
    try:
        for path, layer, shape_in, shape_out in _traced(model, model.input_shape):  # the first misfit
            outputs, scratch = math.prod(shape_out), scratch_values(layer, shape_in, shape_out)
            if outputs > MAX_ACTIVATION:
                raise CheckpointError(f"layer {path} outputs {outputs:,} values per image "
                                      f"(the cap is {MAX_ACTIVATION:,})")  # fmt: skip
            if scratch > MAX_ACTIVATION:
                raise CheckpointError(f"layer {path} works on {scratch:,} values per image besides its "
                                      f"output (the cap is {MAX_ACTIVATION:,})")  # fmt: skip
    except (ValueError, ConfigError) as exc:
        shape = "x".join(map(str, model.input_shape))
        raise CheckpointError(f"the architecture does not fit together on inputs of {shape}: {exc}") from None
    return model


def _traced(layer, input_shape, prefix: str = ""):
    """(path, sublayer, its per-sample input shape, its output shape) for every sublayer of ``layer`` at
    any depth, in the order they run: a Sequential's children each take the one before's output, any
    other container's (a residual block's body and shortcut) all take the container's input."""
    shape = tuple(input_shape)
    for name, child in layer.children().items():
        out = tuple(child.output_shape(shape))
        yield prefix + name, child, shape, out
        yield from _traced(child, shape, f"{prefix}{name}.")
        if isinstance(layer, Sequential):
            shape = out

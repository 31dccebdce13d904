"""Sequential models, the architecture presets, building a model from a checked architecture, and
saving and loading models.

The file format itself (a ``.npz`` archive with a JSON header, read without pickle) and its checks live
in :mod:`cnnx.modelfile`; :meth:`Sequential.save` writes that format and :func:`load_model` builds a
model only from what :func:`cnnx.modelfile.read_archive` has checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np  # host: model files are written and state is copied on the host

from .backends import get_backend
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write
from .functional import softmax
from .init import make_rng
from .layers import REGISTRY, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU
from .modelfile import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    HEADER_FIELDS,
    HEADER_KEY,
    LAYER_SCHEMA,
    MAX_ACTIVATION,
    MAX_HEADER_CHARS,
    MAX_INPUT_SIDE,
    MAX_LAYERS,
    MAX_MEMBERS,
    MAX_NAME_CHARS,
    MAX_PARAMETERS,
    MAX_SIZE,
    PARAM_PREFIX,
    check_architecture,
    check_header,
    is_whole_number,
    read_archive,
    short_repr,
)

# The file format and its checks live in cnnx.modelfile; they are re-exported here so that
# ``from cnnx.model import read_archive`` (and the rest) keeps working.
__all__ = [
    "PRESETS",
    "Sequential",
    "build_from_architecture",
    "build_model",
    "load_model",
    # from cnnx.modelfile
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_FIELDS",
    "HEADER_KEY",
    "LAYER_SCHEMA",
    "MAX_ACTIVATION",
    "MAX_HEADER_CHARS",
    "MAX_INPUT_SIDE",
    "MAX_LAYERS",
    "MAX_MEMBERS",
    "MAX_NAME_CHARS",
    "MAX_PARAMETERS",
    "MAX_SIZE",
    "PARAM_PREFIX",
    "check_architecture",
    "check_header",
    "read_archive",
]


class Sequential:
    """Layers applied in order. The model and all its layers share one backend and one dtype."""

    def __init__(self, layers: list[Layer], *, input_shape=(1, 28, 28), name: str = "custom"):
        if not layers:
            raise ConfigError("a Sequential model needs at least one layer")
        first = layers[0]
        for layer in layers:
            if layer.backend is not first.backend or layer.dtype != first.dtype:
                raise ConfigError("all layers of a model must share one backend and one dtype")
        self.layers = list(layers)
        self.backend, self.xp, self.dtype = first.backend, first.xp, first.dtype
        self.input_shape = tuple(input_shape)
        self.name = name
        self.output_shapes()  # fail now, with a clear message, if the layers do not fit together

    def forward(self, x, train: bool = True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    __call__ = forward

    def backward(self, dy, input_grad: bool = True):
        """Backpropagate ``dy`` (the loss gradient of the output), filling every layer's ``grads``;
        returns the gradient of the input.

        With ``input_grad=False`` (what a training step asks for) no input gradient is made: the first
        layer with parameters only computes its own gradients, and the parameter-free layers below it
        (a Flatten, say) are not visited. Returns None then.
        """
        trained = [i for i, layer in enumerate(self.layers) if layer.params]
        first = 0 if input_grad or not trained else trained[0]
        for i in range(len(self.layers) - 1, first, -1):
            dy = self.layers[i].backward(dy)
        if input_grad:
            return self.layers[0].backward(dy)
        if trained:
            self.layers[first].backward_params(dy)
        return None

    def named_parameters(self) -> Iterator[tuple[str, object, object]]:
        """Yield ("<layer index>.<key>", parameter, gradient) over every layer."""
        for i, layer in enumerate(self.layers):
            for key, param, grad in layer.named_parameters():
                yield f"{i}.{key}", param, grad

    def parameter_count(self) -> int:
        return sum(math.prod(p.shape) for _, p, _ in self.named_parameters())

    def output_shapes(self) -> list[tuple[int, ...]]:
        """The per-sample output shape after each layer, for ``input_shape``."""
        shapes, shape = [], self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("layer", "output shape", "params")]
        for i, (layer, shape) in enumerate(zip(self.layers, self.output_shapes(), strict=True)):
            count = sum(math.prod(p.shape) for _, p, _ in layer.named_parameters())
            rows.append((f"{i:>2} {type(layer).__name__}", "x".join(map(str, shape)), f"{count:,}"))
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(
            f"{self.name}: {self.parameter_count():,} parameters, input {self.input_shape}, "
            f"{self.dtype}, {self.backend.describe()}"
        )
        return "\n".join(lines)

    # -- weights, devices and files ------------------------------------------------------------

    def architecture(self) -> list[dict]:
        return [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter as a host array of its own, keyed "<layer index>.<key>": changing the dict's
        arrays never changes the model."""
        state = {}
        for name, param, _ in self.named_parameters():
            host = self.backend.to_host(param)
            # A backend whose to_host hands back the parameter itself (a view) must not leak it.
            if isinstance(param, np.ndarray) and np.may_share_memory(host, param):
                host = host.copy()
            state[name] = host
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy host arrays into the parameters (same keys, shapes; cast to the model's dtype)."""
        expected = {name: p for name, p, _ in self.named_parameters()}
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise CheckpointError(
                f"parameters do not match the architecture (missing {missing}, unexpected {extra})"
            )
        for name, param in expected.items():
            value = np.asarray(state[name])
            if value.shape != param.shape:
                raise CheckpointError(
                    f"parameter {name} has shape {value.shape}, the architecture needs {param.shape}"
                )
            param[...] = self.backend.to_device(value, self.dtype)

    def to(self, device=None, dtype=None) -> Sequential:
        """A copy of this model on another backend and/or dtype (same weights)."""
        copy = build_from_architecture(
            self.architecture(),
            backend=device or self.backend,
            dtype=dtype or self.dtype,
            input_shape=self.input_shape,
            name=self.name,
        )
        copy.load_state_dict(self.state_dict())
        return copy

    def predict_proba(self, x, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities for host inputs (N, *input_shape) in [0, 1], as a host array."""
        out = []
        for start in range(0, len(x), batch_size):
            batch = self.backend.to_device(x[start : start + batch_size], self.dtype)
            out.append(self.backend.to_host(softmax(self.xp, self.forward(batch, train=False), axis=1)))
        return np.concatenate(out) if out else np.zeros((0, self.output_shapes()[-1][0]), self.dtype)

    def header(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "dtype": str(self.dtype),
            "input_shape": list(self.input_shape),
            "architecture": self.architecture(),
        }

    def save(self, path, extra: dict[str, np.ndarray] | None = None, meta: dict | None = None) -> Path:
        """Write the model to one ``.npz`` file atomically; ``extra`` arrays and ``meta`` JSON ride along."""
        path = Path(path)
        header = self.header() | ({"meta": meta} if meta else {})
        arrays = {PARAM_PREFIX + k: v for k, v in self.state_dict().items()}
        arrays.update(extra or {})
        arrays[HEADER_KEY] = np.array(json.dumps(header))
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)
        return path


# -- presets -------------------------------------------------------------------------------------


def _dense_head(make, features: int) -> list:
    """The original report's classifier, dense 128-64-32-10 with ReLUs, on ``features`` inputs."""
    return [make(Dense, features, 128), make(ReLU), make(Dense, 128, 64), make(ReLU),
            make(Dense, 64, 32), make(ReLU), make(Dense, 32, 10)]  # fmt: skip


def _seed(make):
    conv_blocks = [make(Conv2D, 1, 32, 3), make(ReLU), make(MaxPool2D, 2),
                   make(Conv2D, 32, 64, 3), make(ReLU), make(MaxPool2D, 2)]  # fmt: skip
    return [*conv_blocks, make(Flatten), *_dense_head(make, 64 * 5 * 5)]


def _mlp(make):
    return [make(Flatten), *_dense_head(make, 28 * 28)]


PRESETS = {
    "seed": (_seed, "the original report's CNN: two 3x3 conv blocks (32, 64) and dense 128-64-32-10"),
    "mlp": (_mlp, "the original report's dense-only network 784-128-64-32-10"),
}


def build_model(name: str = "seed", *, backend=None, dtype="float32", seed=0) -> Sequential:
    """Build a preset architecture by name with weights drawn from ``seed`` (same seed, same weights
    on every backend)."""
    if not isinstance(name, str) or name not in PRESETS:  # a name from a file may be any JSON value
        raise ConfigError(f"unknown model {short_repr(name)}: choose one of {', '.join(PRESETS)}")
    if not is_whole_number(seed) or seed < 0:  # NumPy's seeding refuses these with a TypeError or ValueError
        raise ConfigError(f"the seed must be a whole number >= 0, got {short_repr(seed)}")
    recipe, _ = PRESETS[name]
    backend = get_backend(backend)
    rng = make_rng(seed)

    def make(cls, *args):
        kwargs = {"rng": rng} if cls in (Conv2D, Dense) else {}
        return cls(*args, backend=backend, dtype=dtype, **kwargs)

    return Sequential(recipe(make), name=name)


def build_from_architecture(
    architecture, *, backend=None, dtype="float32", input_shape=(1, 28, 28), name="custom"
) -> Sequential:
    """Rebuild a model from its JSON architecture description (weights freshly initialised).

    The description is checked against :data:`LAYER_SCHEMA` first (known types, allowed keys, value
    types, size caps), so nothing unexpected reaches a layer's constructor.
    """
    check_architecture(architecture)
    backend = get_backend(backend)
    layers = []
    for i, entry in enumerate(architecture):
        try:
            layers.append(REGISTRY[entry["type"]](**entry["config"], backend=backend, dtype=dtype))
        except (TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"layer {i} ({entry['type']}) has a bad configuration: {exc}") from None
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):  # in order: a later misfit must not hide an earlier blow-up
        try:
            shape = layer.output_shape(shape)
        except (ValueError, ConfigError) as exc:
            raise CheckpointError(f"the architecture does not fit together: {exc}") from None
        if math.prod(shape) > MAX_ACTIVATION:
            raise CheckpointError(
                f"layer {i} outputs {math.prod(shape):,} values per image (the cap is {MAX_ACTIVATION:,})"
            )
    return Sequential(layers, input_shape=input_shape, name=name)


def load_model(path, *, device=None, dtype=None) -> Sequential:
    """Load a model saved by :meth:`Sequential.save`, checked (see :func:`read_archive`), onto ``device``
    (default CPU), in ``dtype`` (default: the file's)."""
    header, arrays = read_archive(path)
    if dtype is not None and str(np.dtype(dtype)) not in DTYPES:
        raise ConfigError(f"a model loads as one of {', '.join(DTYPES)}, not {dtype}")
    stored = np.dtype(header["dtype"])
    state = {key[len(PARAM_PREFIX) :]: value for key, value in arrays.items() if key.startswith(PARAM_PREFIX)}
    try:
        model = build_from_architecture(
            header["architecture"],
            backend=device,
            dtype=np.dtype(dtype or stored),
            input_shape=tuple(header["input_shape"]),
            name=header["name"],
        )
        model.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model

"""Sequential models, the architecture presets, and the ``.npz`` model format.

A model file is one NumPy ``.npz`` archive: the weights as plain numeric arrays named ``param/<layer
index>.<key>`` and a JSON header (format, version, dtype, input shape, architecture) stored as a
string array under ``__cnnx__``. It is read with ``allow_pickle=False`` and checked against the
architecture before any weight is used, so a file cannot run code on load.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np  # host: model files are read and written on the host

from .backends import get_backend
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write
from .functional import softmax
from .init import make_rng
from .layers import REGISTRY, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU

FORMAT = "cnnx-model"
FORMAT_VERSION = 1
HEADER_KEY = "__cnnx__"
PARAM_PREFIX = "param/"


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

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

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
        """Every parameter as a host array, keyed "<layer index>.<key>"."""
        return {name: self.backend.to_host(p) for name, p, _ in self.named_parameters()}

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


def _seed(make):
    return [
        make(Conv2D, 1, 32, 3),
        make(ReLU),
        make(MaxPool2D, 2),
        make(Conv2D, 32, 64, 3),
        make(ReLU),
        make(MaxPool2D, 2),
        make(Flatten),
        make(Dense, 1600, 128),
        make(ReLU),
        make(Dense, 128, 64),
        make(ReLU),
        make(Dense, 64, 32),
        make(ReLU),
        make(Dense, 32, 10),
    ]


def _mlp(make):
    return [
        make(Flatten),
        make(Dense, 784, 128),
        make(ReLU),
        make(Dense, 128, 64),
        make(ReLU),
        make(Dense, 64, 32),
        make(ReLU),
        make(Dense, 32, 10),
    ]


PRESETS = {
    "seed": (_seed, "the original report's CNN: two 3x3 conv blocks (32, 64) and dense 128-64-32-10"),
    "mlp": (_mlp, "the original report's dense-only network 784-128-64-32-10"),
}


def build_model(name: str = "seed", *, backend=None, dtype="float32", seed=0) -> Sequential:
    """Build a preset architecture by name with weights drawn from ``seed`` (same seed, same weights
    on every backend)."""
    try:
        recipe, _ = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}") from None
    backend = get_backend(backend)
    rng = make_rng(seed)

    def make(cls, *args):
        kwargs = {"rng": rng} if cls in (Conv2D, Dense) else {}
        return cls(*args, backend=backend, dtype=dtype, **kwargs)

    return Sequential(recipe(make), name=name)


def build_from_architecture(
    architecture, *, backend=None, dtype="float32", input_shape=(1, 28, 28), name="custom"
) -> Sequential:
    """Rebuild a model from its JSON architecture description (weights freshly initialised)."""
    backend = get_backend(backend)
    layers = []
    for i, entry in enumerate(architecture):
        if (
            not isinstance(entry, dict)
            or set(entry) != {"type", "config"}
            or not isinstance(entry["config"], dict)
        ):
            raise CheckpointError(f"layer {i} of the architecture is not a {{type, config}} object")
        cls = REGISTRY.get(entry["type"])
        if cls is None:
            raise CheckpointError(f"layer {i} has an unknown type {entry['type']!r}")
        try:
            layers.append(cls(**entry["config"], backend=backend, dtype=dtype))
        except (TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"layer {i} ({entry['type']}) has a bad configuration: {exc}") from None
    try:
        return Sequential(layers, input_shape=input_shape, name=name)
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"the architecture does not fit together: {exc}") from None


# -- loading -------------------------------------------------------------------------------------


def read_archive(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a cnnx ``.npz`` file without pickle: (header, arrays). Raises CheckpointError on any defect."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a model file") from None
    except ValueError as exc:  # object arrays refuse to load without pickle, and say so
        raise CheckpointError(f"{path}: not a safe cnnx file ({str(exc).splitlines()[0]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated archive ({type(exc).__name__})") from None
    if HEADER_KEY not in arrays:
        raise CheckpointError(f"{path}: not a cnnx model file (no {HEADER_KEY} header)")
    raw = arrays.pop(HEADER_KEY)
    if raw.dtype.kind != "U" or raw.shape != ():
        raise CheckpointError(f"{path}: the header is not a JSON string")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the header is not valid JSON ({exc.msg})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(f"{path}: not a cnnx model file (format {found!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path}: format version {version!r} is not supported (this cnnx reads up to {FORMAT_VERSION})"
        )
    return header, arrays


def load_model(path, *, device=None, dtype=None) -> Sequential:
    """Load a model saved by :meth:`Sequential.save`, validated, onto ``device`` (default CPU)."""
    header, arrays = read_archive(path)
    try:
        model_dtype = np.dtype(dtype or header["dtype"])
        input_shape = tuple(int(v) for v in header["input_shape"])
        architecture = header["architecture"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed header ({exc})") from None
    if model_dtype.kind != "f" or not isinstance(architecture, list):
        raise CheckpointError(f"{path}: malformed header (dtype {model_dtype}, architecture not a list)")
    model = build_from_architecture(
        architecture,
        backend=device,
        dtype=model_dtype,
        input_shape=input_shape,
        name=str(header.get("name", "custom")),
    )
    state = {}
    for key, value in arrays.items():
        if key.startswith(PARAM_PREFIX):
            if value.dtype.kind != "f":
                raise CheckpointError(f"{path}: parameter {key} has dtype {value.dtype}, not floating point")
            if not np.isfinite(value).all():
                raise CheckpointError(f"{path}: parameter {key} holds NaN or infinite values")
            state[key[len(PARAM_PREFIX) :]] = value
    try:
        model.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model

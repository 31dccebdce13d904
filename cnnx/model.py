"""Sequential models, the architecture presets, and the ``.npz`` model format.

A model file is one NumPy ``.npz`` archive: the weights as plain numeric arrays named ``param/<layer
index>.<key>`` and a JSON header (format, version, dtype, input shape, architecture) stored as a
string array under ``__cnnx__``. It is read with ``allow_pickle=False`` and checked against the
architecture before any weight is used, so a file cannot run code on load.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np  # host: model files are read and written on the host

from .backends import get_backend
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write
from .functional import softmax
from .init import SCHEMES, make_rng
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
    if not isinstance(name, str) or name not in PRESETS:  # a name from a file may be any JSON value
        raise ConfigError(f"unknown model {_short(name)}: choose one of {', '.join(PRESETS)}")
    if not _is_int(seed) or seed < 0:  # NumPy's seeding refuses these with a TypeError or ValueError
        raise ConfigError(f"the seed must be a whole number >= 0, got {_short(seed)}")
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


# -- the schema a model file is checked against ---------------------------------------------------

# Caps that keep a small hostile file from making cnnx allocate gigabytes; each is far above any model
# cnnx builds (the seed CNN: 234,410 parameters, 21,632 values after its widest layer).
MAX_PARAMETERS = 10**8  # per layer and in total
MAX_ACTIVATION = 10**7  # values per image after any layer
MAX_SIZE = 1 << 24  # any single size: channels, features, kernel, stride, padding
MAX_INPUT_SIDE = 4096  # each of the three input dimensions
MAX_LAYERS = 256
MAX_NAME_CHARS = 100
MAX_HEADER_CHARS = 1 << 20
MAX_MEMBERS = 4096  # arrays in one archive: parameters and optimizer moments of MAX_LAYERS layers
DTYPES = ("float32", "float64")
HEADER_FIELDS = {"format", "version", "name", "dtype", "input_shape", "architecture", "meta"}
_ARRAY_NAME = re.compile(r"(param/\d{1,4}\.[A-Za-z]\w{0,31}|(optim|buffer)/[\w./-]{1,64})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, not a size


def _positive(value) -> bool:
    return _is_int(value) and 1 <= value <= MAX_SIZE


def _non_negative(value) -> bool:
    return _is_int(value) and 0 <= value <= MAX_SIZE


def _kernel(value) -> bool:
    return _positive(value) or (isinstance(value, list) and len(value) == 2 and all(map(_positive, value)))


# Per value check: (what it must be, test).
_SIZE = (f"a whole number in 1..{MAX_SIZE:,}", _positive)
_OFFSET = (f"a whole number in 0..{MAX_SIZE:,}", _non_negative)
_KERNEL = ("a positive whole number or a pair of them", _kernel)
_INIT = ("one of " + ", ".join(SCHEMES), lambda v: v in SCHEMES)
_OPTIONAL_SIZE = ("null or a positive whole number", lambda v: v is None or _positive(v))


def _pair_product(value) -> int:
    return value * value if _is_int(value) else math.prod(value)


# Layer type -> (required keys, {key: check}, parameter count from a checked config).
LAYER_SCHEMA: dict[str, tuple[set, dict, object]] = {
    "Conv2D": (
        {"in_channels", "out_channels"},
        {"in_channels": _SIZE, "out_channels": _SIZE, "kernel_size": _KERNEL, "stride": _SIZE,
         "padding": _OFFSET, "init": _INIT},
        lambda c: c["out_channels"] * (c["in_channels"] * _pair_product(c.get("kernel_size", 3)) + 1),
    ),
    "Dense": (
        {"in_features", "out_features"},
        {"in_features": _SIZE, "out_features": _SIZE, "init": _INIT},
        lambda c: (c["in_features"] + 1) * c["out_features"],
    ),
    "MaxPool2D": (set(), {"kernel_size": _SIZE, "stride": _OPTIONAL_SIZE}, lambda c: 0),
    "ReLU": (set(), {}, lambda c: 0),
    "Flatten": (set(), {}, lambda c: 0),
}  # fmt: skip


def check_architecture(architecture) -> int:
    """Check a JSON architecture description against :data:`LAYER_SCHEMA`; return its parameter count.

    Raises CheckpointError naming the first layer and key that is unknown, missing, of the wrong type
    or over a cap. Nothing is built.
    """
    if not isinstance(architecture, list) or not 1 <= len(architecture) <= MAX_LAYERS:
        raise CheckpointError(f"the architecture must be a list of 1 to {MAX_LAYERS} layers")
    total = 0
    for i, entry in enumerate(architecture):
        if not (
            isinstance(entry, dict) and set(entry) == {"type", "config"} and isinstance(entry["config"], dict)
        ):
            raise CheckpointError(f"layer {i} of the architecture is not a {{type, config}} object")
        kind, config = entry["type"], entry["config"]
        if not isinstance(kind, str) or kind not in LAYER_SCHEMA:
            shown = kind[:40] if isinstance(kind, str) else kind
            raise CheckpointError(
                f"layer {i} has an unknown type {shown!r} (known: {', '.join(LAYER_SCHEMA)})"
            )
        required, checks, count = LAYER_SCHEMA[kind]
        unknown = sorted(str(key)[:40] for key in set(config) - set(checks))
        missing = sorted(required - set(config))
        if unknown or missing:
            problem = f"unexpected key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
            raise CheckpointError(f"layer {i} ({kind}): {problem}")
        for key, value in config.items():
            what, ok = checks[key]
            if not ok(value):
                raise CheckpointError(f"layer {i} ({kind}): {key} must be {what}, got {_short(value)}")
        params = count(config)
        total += params
        if params > MAX_PARAMETERS or total > MAX_PARAMETERS:
            raise CheckpointError(
                f"layer {i} ({kind}) brings the model to {total:,} parameters (the cap is {MAX_PARAMETERS:,})"
            )
    return total


def check_header(header) -> None:
    """Check a model file's JSON header: format, version, name, dtype, input shape and architecture."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"not a cnnx model file (format {_short(found)})")
    version = header.get("version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"the format version must be a positive whole number, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"format version {version} is newer than this cnnx reads (up to {FORMAT_VERSION}): upgrade cnnx"
        )
    unknown = sorted(str(key)[:40] for key in set(header) - HEADER_FIELDS)
    missing = sorted(HEADER_FIELDS - {"meta"} - set(header))
    if unknown or missing:
        problem = f"unexpected field {unknown[0]!r}" if unknown else f"no field {missing[0]!r}"
        raise CheckpointError(f"malformed header ({problem})")
    name, dtype, shape = header["name"], header["dtype"], header["input_shape"]
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()):
        raise CheckpointError(f"the model name must be 1 to {MAX_NAME_CHARS} printable characters")
    if dtype not in DTYPES:
        raise CheckpointError(f"the model dtype must be one of {', '.join(DTYPES)}, got {_short(dtype)}")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(_is_int(v) and 1 <= v <= MAX_INPUT_SIDE for v in shape)
    ):
        raise CheckpointError(
            f"input_shape must be three whole numbers in 1..{MAX_INPUT_SIDE}, got {_short(shape)}"
        )
    if "meta" in header and not isinstance(header["meta"], dict):
        raise CheckpointError("malformed header (meta is not an object)")
    check_architecture(header["architecture"])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- loading -------------------------------------------------------------------------------------


def read_archive(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a cnnx ``.npz`` file without pickle: (header, arrays).

    The zip members must be ``<name>.npy`` files, stored uncompressed (as :meth:`Sequential.save` writes
    them, so memory use is bounded by the file's size), at most :data:`MAX_MEMBERS`; names are the
    header ``__cnnx__`` (a JSON string of at most :data:`MAX_HEADER_CHARS` characters), ``param/...``,
    ``optim/...`` (optimizer state) or ``buffer/...`` (layer state); every array is plain numeric (never
    object, void or structured) and finite where floating. The header is checked with
    :func:`check_header`. Any defect raises CheckpointError with one line naming ``path`` and the
    problem; nothing in the file is ever unpickled or imported.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise CheckpointError(
                    f"{len(members):,} arrays, more than the {MAX_MEMBERS:,} a cnnx file holds"
                )
            arrays = {}
            for info in members:
                name = _array_name(info)
                if name in arrays:
                    raise CheckpointError(f"array {name} appears twice")
                arrays[name] = _read_member(archive, info)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a model file") from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated archive ({_one_line(exc)})") from None
    if HEADER_KEY not in arrays:
        raise CheckpointError(f"{path}: not a cnnx model file (no {HEADER_KEY} header)")
    raw = arrays.pop(HEADER_KEY)
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the header is not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits; nesting too deep
        raise CheckpointError(f"{path}: the header is not usable JSON ({_one_line(exc)})") from None
    try:
        check_header(header)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    for key, value in arrays.items():  # weights are stored in the model's dtype, never cast on the way
        if key.startswith(PARAM_PREFIX) and value.dtype != np.dtype(header["dtype"]):
            raise CheckpointError(f"{path}: {key} has dtype {value.dtype}, the header says {header['dtype']}")
    return header, arrays


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else text or type(exc).__name__


def _array_name(info: zipfile.ZipInfo) -> str:
    name = info.filename.removesuffix(".npy")
    if not info.filename.endswith(".npy") or not (name == HEADER_KEY or _ARRAY_NAME.fullmatch(name)):
        raise CheckpointError(f"unexpected member {_short(info.filename)} (a cnnx file holds only arrays "
                              f"named {HEADER_KEY}, param/, optim/ and buffer/...)")  # fmt: skip
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # bit 0: encrypted
        raise CheckpointError(f"member {name} is compressed or encrypted; cnnx reads stored arrays only")
    return name


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked before any data is read: a numeric dtype (or the JSON
    header's string), a size within the caps, and exactly as many bytes as the header declares."""
    name = info.filename.removesuffix(".npy")
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise CheckpointError(f"array {name}: .npy format version {version} is not supported")
        count = math.prod(shape)
        if dtype.hasobject:
            raise CheckpointError(f"array {name} holds Python objects (pickled), which cnnx never loads")
        if name == HEADER_KEY:
            if dtype.kind != "U" or shape != () or dtype.itemsize // 4 > MAX_HEADER_CHARS:
                raise CheckpointError(
                    f"the header is not a JSON string of at most {MAX_HEADER_CHARS:,} characters"
                )
        elif dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise CheckpointError(f"array {name} has dtype {_short(str(dtype))}, not a plain number type")
        elif count > MAX_PARAMETERS:
            raise CheckpointError(f"array {name} holds {count:,} values (the cap is {MAX_PARAMETERS:,})")
        size = count * dtype.itemsize
        if info.file_size != handle.tell() + size:
            raise CheckpointError(f"array {name}: the archive and the array header disagree on its size")
        data = handle.read(size)
    if len(data) != size:
        raise CheckpointError(f"array {name} is truncated ({len(data)} of {size} bytes)")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"array {name} holds NaN or infinite values")
    return array


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

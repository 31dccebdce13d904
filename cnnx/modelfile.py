"""The cnnx model file: one NumPy ``.npz`` archive, read back without pickle and checked before use.

A model file holds the weights as plain numeric arrays named ``param/<layer index>.<key>`` and a JSON
header (format, version, name, dtype, input shape, architecture, and for a checkpoint its ``meta``)
stored as a string array under ``__cnnx__``; a training checkpoint adds ``optim/...`` (optimizer state)
and ``buffer/...`` (layer state) arrays.

A model file may come from anywhere (a download, a tampered checkpoint), so it is read as untrusted
data. Unpickling an object array can run arbitrary code, so :func:`read_archive` never unpickles or
imports anything: it opens the zip itself, reads each ``.npy`` header before its data (plain numeric
dtypes only, sizes within the caps below) and checks the JSON header and the architecture against
:data:`LAYER_SCHEMA` before anything is built. Any defect is one CheckpointError line.

:mod:`cnnx.model` builds models from what this module has checked, and writes the files it reads; this
module knows nothing of layers or backends.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np  # host: model files are read on the host

from .errors import CheckpointError
from .init import SCHEMES

FORMAT = "cnnx-model"
FORMAT_VERSION = 1
HEADER_KEY = "__cnnx__"
PARAM_PREFIX = "param/"


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


def is_whole_number(value) -> bool:
    """An int that is not a bool: a size or count as JSON or the command line gives it."""
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, not a size


def _positive(value) -> bool:
    return is_whole_number(value) and 1 <= value <= MAX_SIZE


def _non_negative(value) -> bool:
    return is_whole_number(value) and 0 <= value <= MAX_SIZE


def _kernel(value) -> bool:
    return _positive(value) or (isinstance(value, list) and len(value) == 2 and all(map(_positive, value)))


# Per value check: (what it must be, test).
_SIZE = (f"a whole number in 1..{MAX_SIZE:,}", _positive)
_OFFSET = (f"a whole number in 0..{MAX_SIZE:,}", _non_negative)
_KERNEL = ("a positive whole number or a pair of them", _kernel)
_INIT = ("one of " + ", ".join(SCHEMES), lambda v: v in SCHEMES)
_OPTIONAL_SIZE = ("null or a positive whole number", lambda v: v is None or _positive(v))


def _pair_product(value) -> int:
    return value * value if is_whole_number(value) else math.prod(value)


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
                raise CheckpointError(f"layer {i} ({kind}): {key} must be {what}, got {short_repr(value)}")
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
        raise CheckpointError(f"not a cnnx model file (format {short_repr(found)})")
    version = header.get("version")
    if not is_whole_number(version) or version < 1:
        raise CheckpointError(
            f"the format version must be a positive whole number, got {short_repr(version)}"
        )
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
        raise CheckpointError(f"the model dtype must be one of {', '.join(DTYPES)}, got {short_repr(dtype)}")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(is_whole_number(v) and 1 <= v <= MAX_INPUT_SIDE for v in shape)
    ):
        raise CheckpointError(
            f"input_shape must be three whole numbers in 1..{MAX_INPUT_SIDE}, got {short_repr(shape)}"
        )
    if "meta" in header and not isinstance(header["meta"], dict):
        raise CheckpointError("malformed header (meta is not an object)")
    check_architecture(header["architecture"])


def short_repr(value) -> str:
    """``repr(value)`` cut to 60 characters, for quoting a bad value from a file in a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- loading -------------------------------------------------------------------------------------


def read_archive(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a cnnx ``.npz`` file without pickle: (header, arrays).

    The zip members must be ``<name>.npy`` files, stored uncompressed (as
    :meth:`cnnx.model.Sequential.save` writes them, so memory use is bounded by the file's size), at most
    :data:`MAX_MEMBERS`; names are the header ``__cnnx__`` (a JSON string of at most
    :data:`MAX_HEADER_CHARS` characters), ``param/...``, ``optim/...`` (optimizer state) or ``buffer/...``
    (layer state); every array is plain numeric (never object, void or structured) and finite where
    floating. The header is checked with :func:`check_header`. Any defect raises CheckpointError with one
    line naming ``path`` and the problem; nothing in the file is ever unpickled or imported.
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
        raise CheckpointError(f"unexpected member {short_repr(info.filename)} (a cnnx file holds only arrays "
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
            raise CheckpointError(f"array {name} has dtype {short_repr(str(dtype))}, not a plain number type")
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

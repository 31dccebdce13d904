"""Reading a cnnx model file: one NumPy ``.npz`` archive, read back without pickle and checked before use.

The format is written by :mod:`cnnx.nn.saving` (which describes its members). A model file may come
from anywhere (a download, a tampered checkpoint), so it is read as untrusted data. Unpickling an object
array can run arbitrary code, so :func:`read_archive` never unpickles or imports anything: it opens
regular files only, checks the zip's structure before reading any member's data (sizes, offsets,
overlaps: :mod:`cnnx.io.ziplayout`), reads each ``.npy`` header before its data (plain numeric dtypes
only, sizes within the caps) and checks the JSON header and the architecture against the layer
registry (:func:`cnnx.nn.registry.check_architecture`) before anything is built. Any defect is one
CheckpointError line. :func:`load_model` then builds the model from what was checked.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np  # host: model files are read on the host

from cnnx.checks import is_whole_number, short_repr
from cnnx.errors import CheckpointError, ConfigError
from cnnx.fileio import open_regular
from cnnx.nn.datainfo import DataInfo, check_data_info, check_fits, legacy_data_info
from cnnx.nn.model import build_from_architecture
from cnnx.nn.registry import MAX_PARAMETERS, check_architecture
from cnnx.nn.saving import (
    BUFFER_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    HEADER_KEY,
    OPTIM_PREFIX,
    PARAM_PREFIX,
    STREAM_PREFIX,
)

from .ziplayout import check_layout, read_end_record

# Caps of the file itself; the caps of what it describes live with the layer registry.
MAX_INPUT_SIDE = 1 << 16  # each input dimension (a flat input of 65,536 features at most)
MAX_INPUT_VALUES = 1 << 24  # values in one input sample: a 4096 x 4096 image
MAX_NAME_CHARS = 100
MAX_HEADER_CHARS = 1 << 20
MAX_MEMBERS = 4096  # arrays in one archive: parameters, buffers, streams and optimizer moments
# All the members' bytes: a float64 model at the parameter cap, as many buffer values, Adam's two
# moments, and the header (a 4-byte character each).
MAX_ARCHIVE_BYTES = 4 * 8 * MAX_PARAMETERS + 4 * MAX_HEADER_CHARS + MAX_MEMBERS * 256
DTYPES = ("float32", "float64")
HEADER_FIELDS = {"format", "version", "name", "dtype", "input_shape", "architecture", "meta", "data"}
OPTIONAL_FIELDS = {"meta", "data"}  # data: format 3 on
_SEGMENT = r"(?:\d{1,4}|[A-Za-z]\w{0,31})"  # a layer index or a key
_STATE_NAME = rf"{_SEGMENT}(?:\.{_SEGMENT}){{1,24}}"  # "3.W", "4.body.0.W"
_ARRAY_NAME = re.compile(rf"((param|buffer|rng)/{_STATE_NAME}|optim/[\w./-]{{1,200}})")


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
    missing = sorted(HEADER_FIELDS - OPTIONAL_FIELDS - set(header))
    if "data" in header and version < 3:
        unknown = unknown or ["data"]
    if unknown or missing:
        problem = f"unexpected field {unknown[0]!r}" if unknown else f"no field {missing[0]!r}"
        raise CheckpointError(f"malformed header ({problem})")
    name, dtype, shape = header["name"], header["dtype"], header["input_shape"]
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()):
        raise CheckpointError(f"the model name must be 1 to {MAX_NAME_CHARS} printable characters")
    if dtype not in DTYPES:
        raise CheckpointError(f"the model dtype must be one of {', '.join(DTYPES)}, got {short_repr(dtype)}")
    dims, count = ((1, 2, 3), "1 to 3") if version >= 3 else ((3,), "three")  # flat inputs: format 3 on
    if not (
        isinstance(shape, list)
        and len(shape) in dims
        and all(is_whole_number(v) and 1 <= v <= MAX_INPUT_SIDE for v in shape)
        and math.prod(shape) <= MAX_INPUT_VALUES
    ):
        raise CheckpointError(
            f"input_shape must be {count} whole numbers in "
            f"1..{MAX_INPUT_SIDE} (at most {MAX_INPUT_VALUES:,} values), got {short_repr(shape)}"
        )
    if "meta" in header and not isinstance(header["meta"], dict):
        raise CheckpointError("malformed header (meta is not an object)")
    if "data" in header:
        check_data_info(header["data"])
    check_architecture(header["architecture"])


# -- loading -------------------------------------------------------------------------------------


def read_archive(path, *, optimizer: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a cnnx ``.npz`` file without pickle: (header, arrays). With ``optimizer=False`` the
    data of a checkpoint's ``optim/...`` members is not read, only their structure and ``.npy`` headers
    are checked: what loading a model for use needs (under Adam, a third of the checkpoint).

    ``path`` must name a regular file (not a FIFO, a device or a directory: see
    :func:`cnnx.fileio.open_regular`). Its zip structure is checked before any member's data is read
    (:mod:`cnnx.io.ziplayout`: at most :data:`MAX_MEMBERS` members, stored one after another inside the
    file without overlapping, local headers agreeing with the central directory, at most
    :data:`MAX_ARCHIVE_BYTES` in all), so memory use is bounded by the file's real size. The members
    must be ``<name>.npy`` files, stored uncompressed and unencrypted (as :func:`cnnx.nn.saving.write_model`
    writes them); names are the header ``__cnnx__`` (a JSON string of at most :data:`MAX_HEADER_CHARS`
    characters), ``param/...``, ``buffer/...`` (layer state), ``rng/...`` (random streams) or
    ``optim/...`` (optimizer state). The header is read and checked (:func:`check_header`) before any
    array; every array is plain numeric (never object, void or structured) and finite where floating.
    Any defect raises CheckpointError with one line naming ``path`` and the problem; nothing in the file
    is ever unpickled or imported.
    """
    path = Path(path)
    with open_regular(path, "rb", error=CheckpointError, what="model file") as handle:
        try:
            header, arrays = _read_checked(handle, optimizer)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable or truncated archive ({_one_line(exc)})") from None
    return header, arrays


def _read_checked(handle, optimizer: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """What :func:`read_archive` returns, from the open file ``handle``; errors without the path."""
    end = read_end_record(handle, MAX_MEMBERS)  # before zipfile parses the central directory
    with zipfile.ZipFile(handle) as archive:
        members = {}
        for info in archive.infolist():
            name = _array_name(info)
            if name in members:
                raise CheckpointError(f"array {name} appears twice")
            members[name] = info
        check_layout(handle, archive.infolist(), end, MAX_ARCHIVE_BYTES)
        if HEADER_KEY not in members:
            raise CheckpointError(f"not a cnnx model file (no {HEADER_KEY} header)")
        header = _header(_read_member(archive, members.pop(HEADER_KEY)))
        read = {name: optimizer or not name.startswith(OPTIM_PREFIX) for name in members}
        arrays = {name: _read_member(archive, info, read[name]) for name, info in members.items()}
    arrays = {name: array for name, array in arrays.items() if read[name]}
    for key, value in arrays.items():  # weights are stored in the model's dtype, never cast on the way
        floating_buffer = key.startswith(BUFFER_PREFIX) and value.dtype.kind == "f"
        if (key.startswith(PARAM_PREFIX) or floating_buffer) and value.dtype != np.dtype(header["dtype"]):
            raise CheckpointError(f"{key} has dtype {value.dtype}, the header says {header['dtype']}")
    return header, arrays


def _header(raw: np.ndarray) -> dict:
    """The JSON header from its member, parsed and checked."""
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"the header is not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits; nesting too deep
        raise CheckpointError(f"the header is not usable JSON ({_one_line(exc)})") from None
    check_header(header)
    return header


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else text or type(exc).__name__


def _array_name(info: zipfile.ZipInfo) -> str:
    name = info.filename.removesuffix(".npy")
    if not info.filename.endswith(".npy") or not (name == HEADER_KEY or _ARRAY_NAME.fullmatch(name)):
        raise CheckpointError(f"unexpected member {short_repr(info.filename)} (a cnnx file holds only arrays "
                              f"named {HEADER_KEY}, param/, buffer/, rng/ and optim/...)")  # fmt: skip
    if info.flag_bits & 0x1:  # bit 0: encrypted (zipfile would ask for a password)
        raise CheckpointError(f"member {name} is encrypted; cnnx reads plain stored arrays only")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"member {name} is compressed; cnnx reads plain stored arrays only")
    return name


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, data: bool = True) -> np.ndarray | None:
    """One ``.npy`` member, its header checked before any data is read: a numeric dtype (or the JSON
    header's string), a size within the caps, and exactly as many bytes as the header declares. With
    ``data=False`` only the header is read and checked, and None returned."""
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
        if not data:
            return None
        raw = handle.read(size)
    if len(raw) != size:
        raise CheckpointError(f"array {name} is truncated ({len(raw)} of {size} bytes)")
    array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"array {name} holds NaN or infinite values")
    return array


def split_arrays(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of :func:`read_archive` by member prefix, the prefix taken off the names."""
    parts = {prefix: {} for prefix in (PARAM_PREFIX, BUFFER_PREFIX, STREAM_PREFIX, OPTIM_PREFIX)}
    for key, value in arrays.items():
        prefix = key[: key.index("/") + 1]
        parts[prefix][key[len(prefix) :]] = value
    return parts


def model_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What :meth:`cnnx.nn.layers.base.Layer.load_state_dict` takes: parameters, buffers and streams."""
    parts = split_arrays(arrays)
    return parts[PARAM_PREFIX] | parts[BUFFER_PREFIX] | parts[STREAM_PREFIX]


def load_model(path, *, device=None, dtype=None):
    """Load a model saved by :meth:`cnnx.nn.Sequential.save`, checked (see :func:`read_archive`), onto
    ``device`` (default CPU), in ``dtype`` (default: the file's)."""
    header, arrays = read_archive(path, optimizer=False)  # a checkpoint's moments are training state
    if dtype is not None and _dtype_name(dtype) not in DTYPES:
        raise ConfigError(f"a model loads as one of {', '.join(DTYPES)}, not {short_repr(dtype)}")
    try:
        model = build_from_architecture(
            header["architecture"],
            backend=device,
            dtype=np.dtype(dtype or header["dtype"]),
            input_shape=tuple(header["input_shape"]),
            name=header["name"],
        )
        model.load_state_dict(model_state(arrays))
        model.data_info = header_data_info(header, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model


def header_data_info(header: dict, model) -> DataInfo | None:
    """What the model of a checked header means (its ``data`` field, checked to fit the model), or for a
    file written before format 3 what such files meant (:func:`cnnx.nn.datainfo.legacy_data_info`). None
    for an old file whose model is not a classifier (its output is not one vector of scores)."""
    output = model.output_shapes()[-1]
    if "data" not in header:
        return legacy_data_info(model.input_shape, output[0]) if len(output) == 1 and output[0] >= 2 else None
    if len(output) != 1:
        raise CheckpointError(f"the file names classes, but the model's output has shape {output}")
    info = check_data_info(header["data"])
    check_fits(info, model.input_shape, output[0])
    return info


def _dtype_name(dtype) -> str | None:
    """The name of the NumPy dtype ``dtype`` stands for, or None when it stands for none."""
    try:
        return str(np.dtype(dtype))
    except (TypeError, ValueError):
        return None

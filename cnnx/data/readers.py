"""Fashion-MNIST file formats: IDX and Kaggle-CSV reading and writing, image files, the gzip size cap."""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write

IMAGE_SHAPE = (28, 28)
# A gzip file may expand to at most this much: the largest real file (the Kaggle training CSV) is
# about 130 MiB unpacked, and a few hundred bytes of crafted gzip could otherwise claim gigabytes.
MAX_UNPACKED_BYTES = 512 << 20

_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_CSV_FIELDS = 1 + IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_CSV_ROW = re.compile(r"\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*)*")


# ---------------------------------------------------------------- readers


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if path.suffix != ".gz" and head != b"\x1f\x8b":
                return handle.read()
            with gzip.GzipFile(fileobj=handle) as unzipped:
                data = unzipped.read(MAX_UNPACKED_BYTES + 1)
            if len(data) > MAX_UNPACKED_BYTES:
                raise DataError(
                    f"{path}: unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB, more than any "
                    "Fashion-MNIST file; refusing it"
                )
            return data
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _check_labels(path: Path, labels: np.ndarray, where: str, first_line: int = 0) -> None:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{path}: {where} {bad[0] + first_line}: label {labels[bad[0]]} is outside 0-9")


def read_idx(path) -> np.ndarray:
    """Read an IDX images (uint8 N x 28 x 28) or labels (uint8 N) file, gzipped or raw."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in (_IMAGES_MAGIC, _LABELS_MAGIC):
        raise DataError(
            f"{path}: magic number 0x{magic:08X} is neither 0x{_IMAGES_MAGIC:08X} (images) "
            f"nor 0x{_LABELS_MAGIC:08X} (labels)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == 3 and dims[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected, actual = math.prod(dims), len(data) - header
    what = "images" if ndim == 3 else "labels"
    if actual < expected:
        raise DataError(
            f"{path}: truncated: the header declares {dims[0]} {what} ({expected} bytes), "
            f"the file holds {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: {actual - expected} unexpected bytes after the {dims[0]} {what} the header declares"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()
    if ndim == 1:
        _check_labels(path, array, "label index")
    return array


def _parse_csv(path: Path, check_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file, expected a header 'label,pixel1,...,pixel784' and rows")
    header = [field.strip().lower() for field in lines[0].split(",")]
    if header[0] != "label" or len(header) != _CSV_FIELDS:
        problem = "missing header row" if _CSV_ROW.fullmatch(lines[0]) else "unexpected header row"
        raise DataError(f"{path}: line 1: {problem}, expected 'label,pixel1,...,pixel784'")
    rows = lines[1:]
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    # Validate cheaply line by line, then let NumPy's C parser do the real work.
    for number, row in enumerate(rows, start=2):
        if row.count(",") != _CSV_FIELDS - 1:
            raise DataError(f"{path}: line {number}: {row.count(',') + 1} fields, expected {_CSV_FIELDS}")
    try:
        # int16 holds every legal value and lets out-of-range ones through to a clear message below.
        table = np.loadtxt(rows, delimiter=",", dtype=np.int16, ndmin=2)
    except ValueError:
        raise DataError(_first_bad_value(path, rows)) from None
    labels, pixels = table[:, 0], table[:, 1:]
    if check_labels:
        _check_labels(path, labels, "line", first_line=2)
    bad = np.argwhere((pixels < 0) | (pixels > 255))
    if bad.size:
        row, col = bad[0]
        raise DataError(f"{path}: line {row + 2}: pixel{col + 1} = {pixels[row, col]} is outside 0-255")
    images = pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    return images, labels.astype(np.uint8)


def _first_bad_value(path: Path, rows: list[str]) -> str:
    """Describe the first field NumPy refused; the regex pass runs at C speed, so only on failure."""
    for number, row in enumerate(rows, start=2):
        if not _CSV_ROW.fullmatch(row):
            for column, field in enumerate(field.strip() for field in row.split(",")):
                if not (field.isdigit() and len(field) <= 3):
                    name, allowed = (f"pixel{column}", "0-255") if column else ("label", "0-9")
                    return f"{path}: line {number}: {name} = {field!r} is not a whole number in {allowed}"
    return f"{path}: unreadable values"


def read_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a Kaggle Fashion-MNIST CSV (header, then ``label,pixel1,...,pixel784`` per image)."""
    return _parse_csv(Path(path))


def read_image_file(path) -> np.ndarray:
    """Images to classify, uint8 (N, H, W): a picture (PNG, JPEG, WebP, BMP, GIF; N = 1, any size, grey
    with transparency over white), an IDX images file or a Kaggle CSV (N items of 28x28)."""
    from .images import IMAGE_SUFFIXES, read_photo  # Pillow is imported only for pictures

    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _parse_csv(path, check_labels=False)[0]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_photo(path)[None]
    if path.suffix in (".gz", "") or "idx" in path.name or "ubyte" in path.name:
        images = read_idx(path)
        if images.ndim != 3:
            raise DataError(f"{path}: an IDX labels file, expected images")
        if len(images) == 0:
            raise DataError(f"{path}: holds no images")
        return images
    raise DataError(
        f"{path}: unsupported file type {path.suffix!r}; expected a picture "
        f"({', '.join(IMAGE_SUFFIXES)}), a .csv or an IDX file"
    )


# ---------------------------------------------------------------- writers


def write_idx(path, array) -> None:
    """Write a uint8 images (N, 28, 28) or labels (N,) array as IDX; gzipped when the name ends in .gz."""
    path, array = Path(path), np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise ValueError(f"write_idx takes labels (N,) or images (N, H, W), got shape {array.shape}")
    payload = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    try:
        with atomic_write(path) as handle:
            handle.write(payload)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_csv(path, images, labels) -> None:
    """Write images (N, 28, 28) and labels (N,) in the Kaggle layout, header first."""
    path, images, labels = Path(path), np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
    if images.shape[1:] != IMAGE_SHAPE or labels.shape != images.shape[:1]:
        raise ValueError(
            f"write_csv takes images (N, 28, 28) and labels (N,), got {images.shape}, {labels.shape}"
        )
    table = np.column_stack([labels, images.reshape(len(labels), -1)])
    # Vectorised formatting: each value becomes up to three digits then a separator in a 4-byte cell;
    # dropping the zero padding leaves the text. Far faster than formatting 47 million ints in Python.
    cells = np.zeros((256, 4), np.uint8)
    for value in range(256):
        digits = str(value).encode()
        cells[value, : len(digits)] = np.frombuffer(digits, np.uint8)
    header = ",".join(["label"] + [f"pixel{i}" for i in range(1, _CSV_FIELDS)]) + "\n"
    try:
        with atomic_write(path) as handle:
            handle.write(header.encode())
            for start in range(0, len(table), 4096):
                chunk = cells[table[start : start + 4096]]
                chunk[:, :, 3] = ord(",")
                chunk[:, -1, 3] = ord("\n")
                flat = chunk.reshape(-1)
                handle.write(flat[flat != 0].tobytes())
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc

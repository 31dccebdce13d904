"""Fashion-MNIST file formats: IDX and Kaggle-CSV reading and writing, image files, the size cap.

Every file is read through :func:`cnnx.fileio.open_regular` (no FIFO, device or directory) in chunks,
gzip unpacked on the fly, and at most :data:`MAX_UNPACKED_BYTES` of content is accepted. A CSV is
parsed a block of lines at a time, so its memory is that of the arrays it yields plus one block, however
its lines are shaped.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write, open_regular

IMAGE_SHAPE = (28, 28)
# A file may hold (or a gzip file unpack to) at most this much: the largest real file (the Kaggle
# training CSV) is about 130 MiB, and a few hundred bytes of crafted gzip could otherwise claim gigabytes.
MAX_UNPACKED_BYTES = 512 << 20
CHUNK_BYTES = 4 << 20  # read (and parse) this much at a time
MAX_CSV_LINE = 64 << 10  # a Kaggle row is at most 3,139 bytes; a longer line is not one (spaces aside)

_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_CSV_FIELDS = 1 + IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_CSV_ROW = re.compile(r"\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*)*")
_COMMA, _NEWLINE, _ZERO = ord(","), ord("\n"), ord("0")


# ---------------------------------------------------------------- reading in chunks


def _chunks(path: Path) -> Iterator[bytes]:
    """The content of ``path``, unpacked when it is gzip (by name or by content), a chunk at a time."""
    try:
        with open_regular(path, "rb") as handle:
            packed = path.suffix == ".gz" or handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            source = gzip.GzipFile(fileobj=handle) if packed else handle
            total = 0
            while chunk := source.read(CHUNK_BYTES):
                total += len(chunk)
                if total > MAX_UNPACKED_BYTES:
                    raise DataError(
                        f"{path}: {'unpacks to' if packed else 'holds'} more than "
                        f"{MAX_UNPACKED_BYTES >> 20} MiB, more than any Fashion-MNIST file; refusing it"
                    )
                yield chunk
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _read_bytes(path: Path) -> bytes:
    return b"".join(_chunks(path))


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


# ---------------------------------------------------------------- CSV


def _line_blocks(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(first line number, byte offset, lines)`` of ``path``: whole lines, each ending in a newline,
    about a chunk at a time. Blank lines at the end are dropped; a line over MAX_CSV_LINE is refused."""
    # (line, offset) is where the next yield starts: the first held-back blank line, else the buffer.
    pending, line, offset, blank = b"", 1, 0, 0  # blank: whitespace-only lines held back, maybe the end
    for chunk in _chunks(path):
        buffer = pending + chunk
        cut = buffer.rfind(b"\n") + 1
        complete, pending = buffer[:cut], buffer[cut:]
        if len(pending) > MAX_CSV_LINE:
            long_line = line + blank + complete.count(b"\n")
            raise DataError(f"{path}: line {long_line}: longer than {MAX_CSV_LINE:,} bytes, not a CSV row")
        content = len(complete.rstrip())
        if not content:  # only blank lines: counted, never kept (there may be millions)
            blank += complete.count(b"\n")
            continue
        if blank:  # blank lines and then more rows: hand on the first blank line, which the parser refuses
            yield line, offset, b"\n"
            return
        stop = complete.index(b"\n", content) + 1
        yield line, offset, complete[:stop]
        line, offset = line + complete.count(b"\n", 0, stop), offset + stop
        blank = complete.count(b"\n", stop)
    if pending.strip():
        yield line, offset, b"\n" if blank else pending + b"\n"


def _check_field_counts(path: Path, text: np.ndarray, first_line: int) -> None:
    """Refuse the first line of ``text`` (whole lines) without 785 fields, before any line is split."""
    newlines = np.flatnonzero(text == _NEWLINE)
    fields = np.diff(np.searchsorted(np.flatnonzero(text == _COMMA), newlines), prepend=0) + 1
    bad = np.flatnonzero(fields != _CSV_FIELDS)
    if bad.size:
        raise DataError(
            f"{path}: line {first_line + bad[0]}: {fields[bad[0]]} fields, expected {_CSV_FIELDS}"
        )


def _plain_rows(text: np.ndarray) -> np.ndarray | None:
    """The values of ``text`` (whole lines of 785 fields) as int16 (rows, 785) when it is in the plain
    form, digits and separators only, one to three digits a field; else None. Vectorised."""
    separator = text == _COMMA
    separator |= text == _NEWLINE
    if not (((text - np.uint8(_ZERO)) < 10) | separator).all():
        return None
    ends = np.flatnonzero(separator)  # each field's separator
    width = np.diff(ends, prepend=-1) - 1  # digits in each field
    if width.min() < 1 or width.max() > 3:
        return None
    values = text[ends - 1].astype(np.int16) - _ZERO
    values += (text[ends - 2].astype(np.int16) - _ZERO) * np.int16(10) * (width >= 2)
    values += (text[ends - 3].astype(np.int16) - _ZERO) * np.int16(100) * (width == 3)
    return values.reshape(-1, _CSV_FIELDS)


def _general_rows(path: Path, block: bytes, first_line: int, offset: int) -> np.ndarray:
    """The values of ``block`` (whole lines of 785 fields, whitespace around numbers allowed) as int16
    (rows, 785), or the DataError of its first malformed value."""
    try:
        lines = block.decode("utf-8").split("\n")[:-1]  # only newlines end a row, as when cutting blocks
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file (byte {offset + exc.start} is not UTF-8)") from exc
    try:
        # int16 holds every legal value and lets out-of-range ones through to a clear message later.
        return np.loadtxt(lines, delimiter=",", dtype=np.int16, ndmin=2)
    except ValueError:
        raise DataError(_first_bad_value(path, lines, first_line)) from None


def _check_header(path: Path, block: bytes) -> None:
    try:
        first = block.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    header = [field.strip().lower() for field in first.split(",")]
    if header[0] != "label" or len(header) != _CSV_FIELDS:
        problem = "missing header row" if _CSV_ROW.fullmatch(first.strip()) else "unexpected header row"
        raise DataError(f"{path}: line 1: {problem}, expected 'label,pixel1,...,pixel784'")


def _parse_csv(path: Path, check_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images, labels, header = [], [], False
    for line, offset, block in _line_blocks(path):
        if not header:
            head, _, block = block.partition(b"\n")
            _check_header(path, head)
            header, line, offset = True, line + 1, offset + len(head) + 1
            if not block:
                continue
        text = np.frombuffer(block.replace(b"\r\n", b"\n") if b"\r" in block else block, np.uint8)
        _check_field_counts(path, text, line)
        table = _plain_rows(text)  # the form write_csv writes, and CRLF
        if table is None:
            table = _general_rows(path, block, line, offset)
        if check_labels:
            _check_labels(path, table[:, 0], "line", first_line=line)
        bad = np.argwhere((table[:, 1:] < 0) | (table[:, 1:] > 255))
        if bad.size:
            row, col = bad[0]
            raise DataError(
                f"{path}: line {row + line}: pixel{col + 1} = {table[row, col + 1]} is outside 0-255"
            )
        labels.append(table[:, 0].astype(np.uint8))
        images.append(table[:, 1:].astype(np.uint8).reshape(-1, *IMAGE_SHAPE))
    if not header:
        raise DataError(f"{path}: empty file, expected a header 'label,pixel1,...,pixel784' and rows")
    if not images:
        raise DataError(f"{path}: no data rows after the header")
    return np.concatenate(images), np.concatenate(labels)


def _first_bad_value(path: Path, rows: list[str], first_line: int) -> str:
    """Describe the first field NumPy refused; the regex pass runs at C speed, so only on failure."""
    for number, row in enumerate(rows, start=first_line):
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


# ---------------------------------------------------------------- digests


def _idx_header(array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)


def idx_payload_sha256(array) -> str:
    """The SHA-256 of ``array`` as an IDX file's payload (header and bytes, unpacked): that of the
    file it was read from, whatever its compression, and of an IDX file holding a CSV's arrays."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    digest = hashlib.sha256(_idx_header(array))
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes as stored (a .gz archive, not what it unpacks to)."""
    digest, path = hashlib.sha256(), Path(path)
    try:
        with open_regular(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


# ---------------------------------------------------------------- writers


def write_idx(path, array) -> None:
    """Write a uint8 images (N, 28, 28) or labels (N,) array as IDX; gzipped when the name ends in .gz."""
    path, array = Path(path), np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise ValueError(f"write_idx takes labels (N,) or images (N, H, W), got shape {array.shape}")
    payload = _idx_header(array) + array.tobytes()
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

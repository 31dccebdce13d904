"""Fashion-MNIST on the host: IDX and Kaggle-CSV readers, discovery, a verified download, subsets.

Everything here is plain NumPy. Pixels stay uint8 until a batch is scaled with ``scale_pixels``; moving
a batch to the device is the backend's job. Malformed input raises ``DataError`` with one line that
names the file and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
import sys
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .fileio import atomic_write

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SHAPE = (28, 28)
ENV_VAR = "CNNX_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
# S3 website endpoints speak plain HTTP only; integrity comes from the SHA-256 check, not the transport.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
IDX_FILES = {  # split -> (images, labels), as published
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
# SHA-256 of the decompressed IDX payload of each official file. The payload, not the .gz, because
# Debian re-compressed the archives: its .gz MD5s differ from the ones in the zalandoresearch/fashion-mnist
# README (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) while the content is byte-identical, so one
# digest accepts upstream's archives, Debian's and an unpacked copy. Computed from the files of
# dataset-fashion-mnist 0.0~git20200523.55506a9-1; their payload MD5s (f4a8712d..., 9018921c...,
# 8181f547..., 15d48437...) equal those that loaders which first check the README's archive MD5s publish.
PAYLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# A gzip file may expand to at most this much: the largest real file (the Kaggle training CSV) is
# about 130 MiB unpacked, and a few hundred bytes of crafted gzip could otherwise claim gigabytes.
MAX_UNPACKED_BYTES = 512 << 20
SUBSET_SEED = 20170825  # the day Fashion-MNIST was published; any fixed number would do

_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_CSV_FIELDS = 1 + IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_CSV_ROW = re.compile(r"\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*)*")


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == has no single truth value
class Dataset:
    """The four Fashion-MNIST arrays (uint8 pixels, uint8 labels) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


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
    """Images to classify, uint8 (N, 28, 28): a 28x28 PNG, an IDX images file or a Kaggle CSV."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _parse_csv(path, check_labels=False)[0]
    if path.suffix.lower() == ".png":
        return _read_png(path)
    if path.suffix in (".gz", "") or "idx" in path.name or "ubyte" in path.name:
        images = read_idx(path)
        if images.ndim != 3:
            raise DataError(f"{path}: an IDX labels file, expected images")
        if len(images) == 0:
            raise DataError(f"{path}: holds no images")
        return images
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .png, .csv or an IDX file")


def _read_png(path: Path) -> np.ndarray:
    import matplotlib.image  # lazy: only `cnnx predict` needs it

    try:
        pixels = np.asarray(matplotlib.image.imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read the PNG ({exc})") from exc
    if pixels.ndim not in (2, 3) or pixels.shape[:2] != IMAGE_SHAPE:
        height, width = (pixels.shape + (0, 0))[:2]
        raise DataError(f"{path}: image is {width} pixels wide and {height} high, expected 28x28")
    if np.issubdtype(pixels.dtype, np.integer):
        pixels = pixels / np.iinfo(pixels.dtype).max
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        grey = pixels[..., 0] if channels < 3 else pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
        if channels in (2, 4):  # composite over black, the dataset's background
            grey = grey * pixels[..., -1]
        pixels = grey
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)[None]


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


# ---------------------------------------------------------------- discovery


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/cnnx/fashion-mnist`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnx" / "fashion-mnist"


def candidate_dirs(data_dir=None) -> list[tuple[str, Path]]:
    """The places searched, in order, as (label, directory); an explicit choice is the only place."""
    if data_dir is not None:
        return [("--data-dir", Path(data_dir).expanduser())]
    if os.environ.get(ENV_VAR):
        return [(ENV_VAR, Path(os.environ[ENV_VAR]).expanduser())]
    return [("user cache", cache_dir()), ("system package", SYSTEM_DIR)]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a folder we may not enter: treat as absent
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _idx_paths(directory: Path) -> dict[str, Path | None]:
    """Each official IDX name -> its file in ``directory`` (gzipped preferred over raw) or None."""
    found = {}
    for name in (name for pair in IDX_FILES.values() for name in pair):
        gz, raw = directory / name, directory / name.removesuffix(".gz")
        found[name] = gz if _is_file(gz) else raw if _is_file(raw) else None
    return found


def _layout(directory: Path) -> str | None:
    if all(_idx_paths(directory).values()):
        return "idx"
    if all(_is_file(directory / name) for name in CSV_FILES.values()):
        return "csv"
    return None


def _describe(directory: Path) -> str:
    """Why ``directory`` is not usable, in a few words."""
    if not _is_dir(directory):
        return "does not exist"
    idx_missing = [name for name, path in _idx_paths(directory).items() if path is None]
    csv_missing = [name for name in CSV_FILES.values() if not _is_file(directory / name)]
    for missing, total in ((idx_missing, len(PAYLOAD_SHA256)), (csv_missing, len(CSV_FILES))):
        if len(missing) < total:
            return "incomplete, lacks " + ", ".join(missing)
    return "no Fashion-MNIST files"


def _find(data_dir) -> tuple[str, Path, str] | None:
    for label, directory in candidate_dirs(data_dir):
        layout = _layout(directory)
        if layout:
            return label, directory, layout
    return None


def find_dataset(data_dir=None) -> tuple[Path, str] | None:
    """The first candidate directory holding a complete layout, as (directory, "idx" | "csv"), or None."""
    found = _find(data_dir)
    return found[1:] if found else None


# ---------------------------------------------------------------- download


class _DownloadUnavailable(DataError):
    """No mirror could be reached; the caller folds this into the 'nothing found' message."""


def _copy_verified(response, handle, name: str, expected: str) -> None:
    """Stream ``response`` into ``handle`` while hashing the decompressed payload; DataError if it differs."""
    digest, unzip = hashlib.sha256(), zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header
    try:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            handle.write(chunk)
            digest.update(unzip.decompress(chunk))
        digest.update(unzip.flush())
    except zlib.error as exc:
        raise DataError(f"{name}: the download is not valid gzip data ({exc})") from exc
    if not unzip.eof:
        raise DataError(f"{name}: the download ended before the end of the gzip stream")
    if digest.hexdigest() != expected:
        raise DataError(f"{name}: SHA-256 mismatch: expected {expected}, downloaded {digest.hexdigest()}")


def download_fashion_mnist(directory=None, *, opener=None) -> Path:
    """Fetch the official IDX files missing from ``directory`` (default: the cache), each verified.

    ``opener(url, timeout=...)`` returns a readable, closable response (default ``urllib.request.urlopen``).
    A file is renamed into place only after its decompressed SHA-256 matches ``PAYLOAD_SHA256``.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    opener = opener or urllib.request.urlopen
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{directory}: cannot create the download folder ({exc.strerror or exc})") from exc
    for name, expected in PAYLOAD_SHA256.items():
        target = directory / name
        if _is_file(target):  # only verified downloads are ever renamed into place
            continue
        failures = []
        for base in MIRRORS:
            print(f"cnnx: downloading {base}{name}", file=sys.stderr)
            try:
                # A DataError from the check propagates and atomic_write deletes the temporary file.
                with atomic_write(target) as handle, opener(base + name, timeout=60) as response:
                    _copy_verified(response, handle, name, expected)
                break
            except OSError as exc:  # URLError, HTTPError, timeouts, a full disk: try the next mirror
                failures.append(f"{base}{name}: {getattr(exc, 'reason', None) or exc}")
        else:
            raise _DownloadUnavailable("download failed (" + "; ".join(failures) + ")")
    return directory


# ---------------------------------------------------------------- loading


def _read_dir(directory: Path, layout: str) -> list[np.ndarray]:
    arrays = []
    for split in ("train", "test"):
        if layout == "csv":
            arrays.extend(read_csv(directory / CSV_FILES[split]))
            continue
        paths = _idx_paths(directory)
        image_path, label_path = (paths[name] for name in IDX_FILES[split])
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{image_path if images.ndim != 3 else label_path}: IDX files swapped or mislabelled"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels"
            )
        if len(images) == 0:  # nothing to train on or to measure with: say so now, not in a metric later
            raise DataError(f"{image_path}: holds no images")
        arrays.extend((images, labels))
    return arrays


def balanced_subset(labels: np.ndarray, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of ``size`` items: a seeded shuffle, classes taken in turn (balanced where possible)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order].astype(np.int64)
    by_class = np.argsort(shuffled, kind="stable")
    starts = np.searchsorted(shuffled[by_class], shuffled[by_class])  # first slot of each class run
    rank = np.empty(len(order), np.int64)
    rank[by_class] = np.arange(len(order)) - starts  # position of each item within its class
    round_robin = np.argsort(rank * 256 + shuffled, kind="stable")
    return np.sort(order[round_robin[:size]])


def load_fashion_mnist(
    data_dir=None, *, download: bool = True, limit: int | None = None, opener=None
) -> Dataset:
    """Find (or download) Fashion-MNIST and load it.

    Search order: ``data_dir``, else ``$CNNX_DATA`` (either one is the only place looked at), else the
    user cache then the system package, then a verified download into the cache when ``download``.
    ``limit`` keeps a fixed, class-balanced subset: ``limit`` training images and ``ceil(limit / 6)`` test
    images (the full set's 6:1 ratio); the same limit gives the same subset every time.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number, got {limit!r}")
    candidates = candidate_dirs(data_dir)
    found = _find(data_dir)
    if found:
        label, directory, layout = found
    elif candidates[0][0] in ("--data-dir", ENV_VAR):  # an explicit choice never falls through
        label, directory = candidates[0]
        raise DataError(
            f"{label} {directory} has no Fashion-MNIST ({_describe(directory)}): expected the four IDX "
            f"files (train-images-idx3-ubyte[.gz], ...) or {CSV_FILES['train']} and {CSV_FILES['test']}"
        )
    else:
        tried = [f"{label} {path} ({_describe(path)})" for label, path in candidates]
        try:
            if not download:
                raise _DownloadUnavailable("download disabled")
            directory, layout, label = download_fashion_mnist(opener=opener), "idx", "downloaded to"
        except _DownloadUnavailable as exc:
            raise DataError(
                f"Fashion-MNIST not found; tried {', '.join(tried)}, {exc}. Fix: pass --data-dir DIR "
                f"or set {ENV_VAR}=DIR (the IDX files or the Kaggle CSVs), or `apt-get install "
                f"dataset-fashion-mnist`, or allow the download from {MIRRORS[0]}"
            ) from None
    arrays = _read_dir(directory, layout)
    if limit is not None:
        for i, size in ((0, limit), (2, math.ceil(limit / 6))):
            keep = balanced_subset(arrays[i + 1], size)
            arrays[i], arrays[i + 1] = arrays[i][keep], arrays[i + 1][keep]
    return Dataset(*arrays, source=f"{label} {directory} ({layout})")


def scale_pixels(images_uint8, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) or (N, 1, H, W) -> floats in [0, 1] of ``dtype``, shaped (N, 1, H, W)."""
    images, dtype = np.asarray(images_uint8), np.dtype(dtype)
    if images.dtype != np.uint8 or dtype.kind != "f":
        raise TypeError(f"scale_pixels maps uint8 pixels to floats, got {images.dtype} -> {dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"scale_pixels takes images (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    if images.ndim == 3:
        images = images[:, None]
    scaled = images.astype(dtype)
    scaled /= 255
    return scaled

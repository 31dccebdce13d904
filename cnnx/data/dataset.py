"""The loaded data set: the ``Dataset`` arrays, loading with its search order, subsets, pixel scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..nn.datainfo import FASHION_MNIST_CLASSES, MAX_CLASS_CHARS, scaled_pixels
from ..nn.datainfo import MAX_CLASSES as MAX_CLASSES  # the most classes a data set may name
from .readers import file_sha256, idx_payload_sha256, read_csv, read_idx
from .sources import IDX_FILES, _DownloadUnavailable, _idx_paths, idx_source, recognise, search
from .sources import download as fetch_idx

CLASS_NAMES = FASHION_MNIST_CLASSES  # defined with what a model file says of its classes
MAX_CLASS_NAME = MAX_CLASS_CHARS  # characters in a class name: as many as a model file may hold
SUBSET_SEED = 20170825  # the day Fashion-MNIST was published; any fixed number would do


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == has no single truth value
class Dataset:
    """The four arrays of a data set (uint8 pixels, uint8 labels), where they came from, and the class
    names when the data set has its own (None: Fashion-MNIST's, or the class numbers)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    class_names: tuple | None = None


# ---------------------------------------------------------------- loading


def _read_dir(directory: Path, layout: str, name: str = "fashion-mnist") -> list[np.ndarray]:
    arrays = []
    for split in ("train", "test"):
        if layout == "csv":
            arrays.extend(read_csv(directory / idx_source(name).csv_files[split]))
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
    data_dir=None,
    *,
    download: bool = True,
    limit: int | None = None,
    test_limit: int | None = None,
    opener=None,
    quiet: bool = False,
) -> Dataset:
    """Find (or download) Fashion-MNIST and load it.

    Search order: ``data_dir``, else ``$CNNX_DATA`` (either one is the only place looked at), else the
    user cache then the system package, then a verified download into the cache when ``download``
    (saying so on stderr unless ``quiet``). ``limit`` keeps a fixed, class-balanced subset: ``limit``
    training images and ``ceil(limit / 6)`` test images (the full set's 6:1 ratio); the same limit gives
    the same subset every time. ``test_limit`` sets the number of test images on its own (a
    class-balanced subset of that many; all of them when it is at least the test set's size). A folder
    whose files are another published data set's (by their SHA-256) is refused.
    """
    return load_idx_dataset("fashion-mnist", data_dir, download=download, limit=limit,
                            test_limit=test_limit, opener=opener, quiet=quiet)  # fmt: skip


def load_idx_dataset(
    name: str,
    data_dir=None,
    *,
    download: bool = True,
    limit: int | None = None,
    test_limit: int | None = None,
    opener=None,
    quiet: bool = False,
) -> Dataset:
    """Find (or download) the IDX data set ``name`` ("fashion-mnist", "mnist" or "kmnist") and load it,
    as :func:`load_fashion_mnist` does; MNIST and KMNIST are searched in ``data_dir``, else the user cache
    (``~/.cache/cnnx/mnist``, ...), then downloaded. The result carries the data set's class names."""
    for option, value in (("limit", limit), ("test_limit", test_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{option} must be a positive whole number, got {value!r}")
    source, looked = idx_source(name), search(data_dir, name)
    if looked.found:
        label, directory, layout = looked.found
    elif looked.explicit:  # an explicit choice never falls through
        raise DataError(looked.not_there())
    else:
        try:
            if not download:
                raise _DownloadUnavailable("download disabled")
            directory = fetch_idx(name, opener=opener, quiet=quiet)
            label, layout = "downloaded to", "idx"
        except _DownloadUnavailable as exc:
            fixes = ["pass --data-dir DIR"]
            fixes += [f"set {source.env_var}=DIR"] if source.env_var else []
            fixes[-1] += " (the IDX files or the Kaggle CSVs)"
            fixes += [f"`apt-get install {source.package}`"] if source.package else []
            fixes += [f"allow the download from {source.mirrors[0]}"]
            raise DataError(
                f"{source.title} not found; tried {looked.tried()}, {exc}. Fix: " + ", or ".join(fixes)
            ) from None
    arrays = _read_dir(directory, layout, name)
    if label != "downloaded to":  # a download is verified already
        _check_identity(f"{label} {directory}", directory, layout, name, arrays)
    sizes = [(0, limit), (2, test_limit if test_limit is not None else limit and math.ceil(limit / 6))]
    for i, size in sizes:
        if size is not None and size < len(arrays[i]):
            keep = balanced_subset(arrays[i + 1], size)
            arrays[i], arrays[i + 1] = arrays[i][keep], arrays[i + 1][keep]
    return Dataset(*arrays, source=f"{label} {directory} ({layout})", class_names=source.class_names)


def _check_identity(where: str, directory: Path, layout: str, name: str, arrays: list) -> None:
    """Refuse a folder whose files are another published data set's (MNIST's digits asked for as
    Fashion-MNIST, say), known by their SHA-256: of the IDX payload of what was read (which a CSV of
    the same arrays shares), and of each .gz as stored."""
    files = [file for pair in IDX_FILES.values() for file in pair]
    payload = {file: idx_payload_sha256(array) for file, array in zip(files, arrays, strict=True)}
    stored = _idx_paths(directory) if layout == "idx" else {}
    archive = {file: file_sha256(path) for file, path in stored.items() if path.suffix == ".gz"}
    matches = recognise(payload, archive)
    if matches and name not in (match for match, _ in matches):
        (other, file), asked = matches[0], idx_source(name)
        other = idx_source(other)
        raise DataError(
            f"{where} holds {other.title}, not {asked.title}: {file} has the SHA-256 of {other.title}'s "
            f"published file; pass --dataset {other.name}"
        )


def scale_pixels(images_uint8, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) or (N, 1, H, W) -> floats in [0, 1] of ``dtype``, shaped (N, 1, H, W)."""
    images, dtype = np.asarray(images_uint8), np.dtype(dtype)
    if images.dtype != np.uint8 or dtype.kind != "f":
        raise TypeError(f"scale_pixels maps uint8 pixels to floats, got {images.dtype} -> {dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"scale_pixels takes images (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    return scaled_pixels(images[:, None] if images.ndim == 3 else images, dtype)


def model_inputs(images, dtype, input_shape) -> np.ndarray:
    """A host batch as a model takes it, shaped (N, *input_shape) in ``dtype``: uint8 pixels are scaled to
    [0, 1] (:func:`cnnx.nn.datainfo.scaled_pixels`, as :func:`scale_pixels` and predictions scale them);
    any other numbers (features, already scaled images) are cast as they are."""
    images, dtype = np.asarray(images), np.dtype(dtype)
    if images.dtype == np.uint8:
        x = scaled_pixels(images, dtype)
    else:
        x = images.astype(dtype, copy=False)
    return x.reshape(len(x), *input_shape)

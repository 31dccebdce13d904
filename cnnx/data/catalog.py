"""The data sets a run can name (``--dataset``) and the one call that loads any of them.

- ``fashion-mnist`` (the default), ``mnist`` and ``kmnist``: the four IDX files or the Kaggle CSVs,
  found or downloaded and verified (see :mod:`cnnx.data.sources`). ``--data-dir`` may hold any data
  set's files under the same names: a ``classes.txt`` beside them names its classes, and a preset takes
  as many classes as the data has. A folder whose files are another published data set's is refused.
- an image folder: with the default data set, a ``--data-dir`` holding ``train/<class>/*.png`` and
  ``test/<class>/*.png`` (no IDX or CSV files) is read as one's own pictures, named by their class
  folders (see :mod:`cnnx.data.folders`). No data set name is needed: the folder says what it is, as
  a folder of another data set's IDX files does.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images; offline), scaled from 0-16 to
  0-255 and upsampled to 28x28 bilinearly, so every preset takes them as they are; a seeded,
  stratified fifth is the test set.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np  # host

from ..errors import ConfigError, DataError
from ..fileio import open_regular
from .dataset import CLASS_NAMES, MAX_CLASS_NAME, MAX_CLASSES, Dataset, balanced_subset, load_idx_dataset
from .folders import is_image_folder, load_image_folder, stderr_progress
from .sources import IDX_DATASETS, idx_source, search

DATASETS = (*IDX_DATASETS, "digits")
CLASSES_FILE = "classes.txt"  # optional, in a data folder: the class names, one a line, label 0 first
# 1,000 names of 100 characters, each up to 4 bytes in UTF-8, and a line break: a larger file is not one
MAX_CLASSES_FILE_BYTES = MAX_CLASSES * (4 * MAX_CLASS_NAME + 2)
DIGITS_TEST_SHARE = 0.2
DIGITS_SEED = 0
DIGITS_SIDE = 28


def load_dataset(
    name: str = "fashion-mnist",
    data_dir=None,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
    quiet: bool = False,
) -> Dataset:
    """Load the data set ``name``; ``limit`` keeps a class-balanced subset of that many training images
    (and a sixth as many test images, or ``test_limit``), as for Fashion-MNIST. ``quiet`` keeps stderr
    silent: no download lines, no progress while reading a large image folder."""
    if name in IDX_DATASETS:
        folder = image_folder(name, data_dir)
        if folder is not None:
            progress = None if quiet else stderr_progress(folder)
            return load_image_folder(folder, limit=limit, test_limit=test_limit, progress=progress)
        dataset = load_idx_dataset(name, data_dir, limit=limit, test_limit=test_limit, quiet=quiet)
        names = _names_file(data_dir)
        if names is not None:
            dataset = Dataset(dataset.train_images, dataset.train_labels, dataset.test_images,
                              dataset.test_labels, source=dataset.source, class_names=names)  # fmt: skip
        return dataset
    if name == "digits":
        if data_dir is not None:
            raise ConfigError(
                "--data-dir has no meaning for the digits data set, which ships with scikit-learn"
            )
        return _digits(limit, test_limit)
    raise ConfigError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")


def image_folder(name: str, data_dir) -> Path | None:
    """``data_dir`` when it is to be read as an image folder (a ``train/`` or ``test/`` subfolder, and
    no IDX or CSV files, which win), else None; the rule both loading and ``cnnx info`` follow. Only the
    default data set reads one: ``--dataset mnist`` with an image folder is a ConfigError."""
    if data_dir is None or not is_image_folder(data_dir) or search(data_dir, name).found:
        return None
    folder = Path(data_dir).expanduser()
    if name != "fashion-mnist":
        raise ConfigError(
            f"--data-dir {folder} is an image folder (train/ and test/ of class folders), not "
            f"{idx_source(name).title}'s files: leave out --dataset {name} to train on its pictures"
        )
    return folder


def class_count(dataset: Dataset) -> int:
    """How many classes the data set has: its names' count, else the largest label plus one (at least 2)."""
    if dataset.class_names is not None:
        return len(dataset.class_names)
    labels = [a.max() for a in (dataset.train_labels, dataset.test_labels) if len(a)]
    return max(2, int(max(labels)) + 1)


def class_names(dataset: Dataset, count: int) -> list[str]:
    """The names of ``count`` classes: the data set's own, Fashion-MNIST's for ten unnamed ones, else
    the class numbers."""
    if dataset.class_names is not None and len(dataset.class_names) == count:
        return list(dataset.class_names)
    return list(CLASS_NAMES) if count == len(CLASS_NAMES) else [str(i) for i in range(count)]


def _names_file(data_dir) -> tuple[str, ...] | None:
    """The class names of a data folder: ``classes.txt`` beside its files, one name a line, if present."""
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser() / CLASSES_FILE
    if not os.path.lexists(path):
        return None
    with open_regular(path, "rb", what="class names file") as handle:
        content = handle.read(MAX_CLASSES_FILE_BYTES + 1)
    if len(content) > MAX_CLASSES_FILE_BYTES:
        raise DataError(
            f"{path}: more than {MAX_CLASSES_FILE_BYTES:,} bytes, more than {MAX_CLASSES:,} class names"
        )
    try:
        lines = content.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: unreadable class names (byte {exc.start} is not UTF-8)") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not 2 <= len(names) <= MAX_CLASSES or any(
        len(n) > MAX_CLASS_NAME or not n.isprintable() for n in names
    ):
        raise DataError(
            f"{path}: expected 2 to {MAX_CLASSES} class names of at most {MAX_CLASS_NAME} printable "
            "characters, one a line"
        )
    return names


def digest(dataset: Dataset) -> str:
    """The SHA-256 of the data set's four arrays (shapes and bytes): two runs with the same digest saw
    the same data."""
    h = hashlib.sha256()
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        array = np.ascontiguousarray(array)
        h.update(repr((array.dtype.str, array.shape)).encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _digits(limit: int | None, test_limit: int | None = None) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    small = np.clip(np.round(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)
    large = np.stack([np.asarray(Image.fromarray(image).resize((DIGITS_SIDE, DIGITS_SIDE), Image.BILINEAR))
                      for image in small])  # fmt: skip
    labels = bunch.target.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        large, labels, test_size=DIGITS_TEST_SHARE, stratify=labels, random_state=DIGITS_SEED
    )
    if limit is not None and limit < 10:
        raise DataError(f"limit {limit} is below one image per digit")
    test_size = test_limit
    if limit is not None and limit < len(x_train):
        keep = balanced_subset(y_train, limit)
        x_train, y_train = x_train[keep], y_train[keep]
        test_size = test_size if test_size is not None else max(10, -(-limit // 6))
    if test_size is not None and test_size < len(x_test):
        keep = balanced_subset(y_test, test_size)
        x_test, y_test = x_test[keep], y_test[keep]
    source = "scikit-learn digits (8x8, upsampled to 28x28)"
    return Dataset(
        x_train, y_train, x_test, y_test, source=source, class_names=tuple(str(d) for d in range(10))
    )

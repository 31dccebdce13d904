"""The data sets a run can name (``--dataset``) and the one call that loads any of them.

- ``fashion-mnist`` (the default): the four IDX files or the Kaggle CSVs, found or downloaded and
  verified (see :mod:`cnnx.data.sources`).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images; offline), scaled from 0-16 to
  0-255 and upsampled to 28x28 bilinearly, so every preset takes them as they are; a seeded,
  stratified fifth is the test set.
"""

from __future__ import annotations

import hashlib

import numpy as np  # host

from ..errors import ConfigError, DataError
from .dataset import CLASS_NAMES, Dataset, balanced_subset, load_fashion_mnist

DATASETS = ("fashion-mnist", "digits")
DIGITS_TEST_SHARE = 0.2
DIGITS_SEED = 0
DIGITS_SIDE = 28


def load_dataset(name: str = "fashion-mnist", data_dir=None, *, limit: int | None = None) -> Dataset:
    """Load the data set ``name``; ``limit`` keeps a class-balanced subset of that many training images
    (and a sixth as many test images), as for Fashion-MNIST."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, limit=limit)
    if name == "digits":
        if data_dir is not None:
            raise ConfigError(
                "--data-dir has no meaning for the digits data set, which ships with scikit-learn"
            )
        return _digits(limit)
    raise ConfigError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")


def class_names(dataset: Dataset, count: int) -> list[str]:
    """The names of ``count`` classes: the data set's own, Fashion-MNIST's for ten unnamed ones, else
    the class numbers."""
    if dataset.class_names is not None and len(dataset.class_names) == count:
        return list(dataset.class_names)
    return list(CLASS_NAMES) if count == len(CLASS_NAMES) else [str(i) for i in range(count)]


def digest(dataset: Dataset) -> str:
    """The SHA-256 of the data set's four arrays (shapes and bytes): two runs with the same digest saw
    the same data."""
    h = hashlib.sha256()
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        array = np.ascontiguousarray(array)
        h.update(repr((array.dtype.str, array.shape)).encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _digits(limit: int | None) -> Dataset:
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
    if limit is not None:
        if limit < 10:
            raise DataError(f"limit {limit} is below one image per digit")
        if limit < len(x_train):
            keep = balanced_subset(y_train, limit)
            x_train, y_train = x_train[keep], y_train[keep]
            test_keep = balanced_subset(y_test, max(10, -(-limit // 6)))
            x_test, y_test = x_test[test_keep], y_test[test_keep]
    source = "scikit-learn digits (8x8, upsampled to 28x28)"
    return Dataset(
        x_train, y_train, x_test, y_test, source=source, class_names=tuple(str(d) for d in range(10))
    )

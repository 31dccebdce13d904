"""Other data sets: scikit-learn's digits through the same run machinery, class names in the records, and
the content digest every run record carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import DATASETS, Dataset, class_names, digest, load_dataset
from cnnx.errors import ConfigError, DataError
from cnnx.training import RunConfig

from helpers import blobs


def test_digits_come_as_28x28_uint8_images_in_a_seeded_stratified_split():
    data = load_dataset("digits")
    assert data.train_images.shape == (1437, 28, 28) and data.test_images.shape == (360, 28, 28)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255
    assert np.bincount(data.test_labels).min() >= 35, "every digit is in the test set"
    again = load_dataset("digits")
    assert np.array_equal(data.train_images, again.train_images) and digest(data) == digest(again)
    assert class_names(data, 10) == [str(d) for d in range(10)]


def test_a_limit_keeps_a_balanced_subset_of_digits():
    data = load_dataset("digits", limit=100)
    assert len(data.train_images) == 100 and np.bincount(data.train_labels).tolist() == [10] * 10
    with pytest.raises(DataError, match="below one image per digit"):
        load_dataset("digits", limit=5)


def test_digits_refuse_a_data_dir_and_unknown_names_list_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="--data-dir has no meaning for the digits"):
        load_dataset("digits", tmp_path)
    with pytest.raises(ConfigError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="dataset must be one of " + ", ".join(DATASETS)):
        RunConfig(dataset="cifar")


def test_class_names_fall_back_to_fashion_mnist_or_numbers():
    unnamed = Dataset(*blobs(20, 1), *blobs(10, 2), source="blobs")
    assert class_names(unnamed, 10)[6] == "Shirt" and class_names(unnamed, 3) == ["0", "1", "2"]


def test_the_digest_changes_with_the_data():
    a = Dataset(*blobs(20, 1), *blobs(10, 2), source="blobs")
    b = Dataset(*blobs(20, 3), *blobs(10, 2), source="blobs")
    assert digest(a) != digest(b) and len(digest(a)) == 64


def test_cnnx_train_on_digits_records_the_data_set_its_digest_and_its_class_names(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                                      "--out", str(out), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["dataset"] == "digits" and record["class_names"][:2] == ["0", "1"]
    assert record["config"]["data_digest"] == digest(load_dataset("digits"))
    assert "scikit-learn digits" in record["config"]["data_source"]

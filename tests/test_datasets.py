"""Other data sets: scikit-learn's digits through the same run machinery, class names in the records, and
the content digest every run record carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cnnx
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


def test_a_folder_of_another_data_set_brings_its_classes_and_their_names(tmp_path):
    from cnnx.data import IDX_FILES, write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 15)):
        image_name, label_name = IDX_FILES[split]
        write_idx(tmp_path / image_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / label_name, (np.arange(n) % 3).astype(np.uint8))
    (tmp_path / "classes.txt").write_text("circle\nsquare\n\ntriangle\n")
    out = tmp_path / "run"
    args = ["train", "--model", "seed", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
            "--out", str(out), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["class_names"] == ["circle", "square", "triangle"]
    assert len(record["confusion_matrix"]) == 3
    assert cnnx.load_model(out / "model.npz").output_shapes()[-1] == (3,)


def test_a_class_names_file_must_hold_sensible_names(tmp_path):
    from cnnx.data.catalog import _names_file

    (tmp_path / "classes.txt").write_text("only-one\n")
    with pytest.raises(DataError, match="expected 2 to 1000 class names"):
        _names_file(tmp_path)
    assert _names_file(None) is None


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_a_test_limit_sets_the_number_of_test_images_on_its_own(tmp_path, name):
    from helpers import write_blob_idx

    data_dir = None if name == "digits" else write_blob_idx(tmp_path)
    data = load_dataset(name, data_dir, test_limit=20)
    assert len(data.test_labels) == 20 and np.bincount(data.test_labels).tolist() == [2] * 10

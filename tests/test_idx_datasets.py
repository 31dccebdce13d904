"""MNIST and KMNIST beside Fashion-MNIST: the same IDX files, their own search places and class names,
and downloads verified against the published digests of the archives (not of the payload)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import struct
import urllib.error

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx import data
from cnnx.cli import cli
from cnnx.data import load_dataset, sources
from cnnx.errors import DataError

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
NAMES += ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ARCHIVE_DIGESTS = {"mnist": "MNIST_ARCHIVE_SHA256", "kmnist": "KMNIST_ARCHIVE_SHA256"}
MIRRORS = {"mnist": "MNIST_MIRRORS", "kmnist": "KMNIST_MIRRORS"}


def _payload(array):
    return struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.tobytes()


def _arrays():
    rng = np.random.default_rng(3)
    labels = [(np.arange(n) % 10).astype(np.uint8) for n in (40, 20)]
    images = [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (40, 20)]
    return dict(zip(NAMES, (images[0], labels[0], images[1], labels[1]), strict=True))


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Archives as a mirror serves them; the recorded archive digests of both data sets patched to match,
    the mirrors to fake ones, and the cache to an empty folder."""
    archives = {name: gzip.compress(_payload(a), mtime=0) for name, a in _arrays().items()}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in archives.items()}
    for dataset, attribute in ARCHIVE_DIGESTS.items():
        monkeypatch.setattr(sources, attribute, dict(digests))
        monkeypatch.setattr(sources, MIRRORS[dataset], (f"https://{dataset}-a/", f"https://{dataset}-b/"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return archives


def _opener(files, down=()):
    calls = []

    def opener(url, timeout=None):
        calls.append(url)
        base, name = url.rsplit("/", 1)
        if base + "/" in down:
            raise urllib.error.URLError("unreachable")
        return io.BytesIO(files[name])

    opener.calls = calls
    return opener


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_a_download_lands_in_its_own_cache_and_loads_with_its_class_names(served, tmp_path, name):
    opener = _opener(served, down=(f"https://{name}-a/",))
    dataset = data.load_idx_dataset(name, opener=opener)
    assert np.array_equal(dataset.train_images, _arrays()[NAMES[0]])
    assert dataset.source.startswith("downloaded to") and dataset.source.endswith("(idx)")
    assert sorted(p.name for p in (tmp_path / "xdg" / "cnnx" / name).iterdir()) == sorted(NAMES)
    assert opener.calls[:2] == [f"https://{name}-a/{NAMES[0]}", f"https://{name}-b/{NAMES[0]}"]
    expected = [str(d) for d in range(10)] if name == "mnist" else list(sources.KMNIST_CLASSES)
    assert list(dataset.class_names) == expected
    again = _opener(served)
    data.load_idx_dataset(name, opener=again)
    assert again.calls == [], "a verified download is not fetched twice"


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_the_digest_is_of_the_archive_so_a_recompressed_copy_is_refused(served, tmp_path, name):
    # The same payload, compressed again (another level, another time stamp): Fashion-MNIST's payload
    # digests would accept it; MNIST's and KMNIST's published digests are of the archive as served.
    recompressed = dict(served)
    recompressed[NAMES[2]] = gzip.compress(gzip.decompress(served[NAMES[2]]), compresslevel=1, mtime=1)
    with pytest.raises(DataError) as info:
        data.load_idx_dataset(name, opener=_opener(recompressed))
    message, actual = str(info.value), hashlib.sha256(recompressed[NAMES[2]]).hexdigest()
    assert NAMES[2] in message and actual in message and "\n" not in message
    assert not (tmp_path / "xdg" / "cnnx" / name / NAMES[2]).exists(), "nothing unverified is kept"


def test_a_download_that_is_not_gzip_is_refused_even_when_only_the_archive_is_hashed(served, monkeypatch):
    broken = dict(served)
    broken[NAMES[1]] = b"<html>not found</html>"
    monkeypatch.setitem(sources.MNIST_ARCHIVE_SHA256, NAMES[1], hashlib.sha256(broken[NAMES[1]]).hexdigest())
    with pytest.raises(DataError, match="not valid gzip data"):
        data.load_idx_dataset("mnist", opener=_opener(broken))


def test_not_found_offline_says_where_it_looked_and_how_to_fix_it(served, tmp_path):
    with pytest.raises(DataError) as info:
        data.load_idx_dataset(
            "kmnist", opener=_opener(served, down=("https://kmnist-a/", "https://kmnist-b/"))
        )
    message = str(info.value)
    assert message.startswith("KMNIST not found; tried user cache") and "\n" not in message
    assert "pass --data-dir DIR" in message and "allow the download from https://kmnist-a/" in message
    assert "CNNX_DATA" not in message and "apt-get" not in message, "those are Fashion-MNIST's places"


def test_a_data_dir_is_the_only_place_looked_at_and_csv_files_carry_the_data_set_name(tmp_path):
    arrays = list(_arrays().values())
    data.write_csv(tmp_path / "mnist_train.csv", arrays[0], arrays[1])
    data.write_csv(tmp_path / "mnist_test.csv", arrays[2], arrays[3])
    dataset = load_dataset("mnist", tmp_path)
    assert np.array_equal(dataset.test_images, arrays[2]) and dataset.source.endswith("(csv)")
    with pytest.raises(DataError, match=r"--data-dir .* has no KMNIST \(no KMNIST files\)"):
        load_dataset("kmnist", tmp_path)


def test_the_recorded_digests_and_mirrors_are_well_formed():
    for name in ("fashion-mnist", "mnist", "kmnist"):
        source = sources.idx_source(name)
        assert sorted(source.sha256) == sorted(NAMES) and source.mirrors
        assert all(re.fullmatch("[0-9a-f]{64}", d) for d in source.sha256.values())
        assert source.mirrors[0].startswith(("https://", "http://")) and source.mirrors[0].endswith("/")
    assert sources.idx_source("mnist").hashed == sources.idx_source("kmnist").hashed == "archive"
    assert sources.idx_source("fashion-mnist").hashed == "payload"
    with pytest.raises(ValueError, match="no IDX data set named 'cifar'"):
        sources.idx_source("cifar")


def test_cnnx_train_on_kmnist_records_the_data_set_and_its_class_names(tmp_path):
    folder = tmp_path / "kmnist"
    folder.mkdir()
    for name, array in _arrays().items():
        data.write_idx(folder / name, array)
    out = tmp_path / "run"
    args = ["train", "--dataset", "kmnist", "--data-dir", str(folder), "--epochs", "1", "--batch-size", "8"]
    result = CliRunner().invoke(cli, [*args, "--model", "mlp", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["dataset"] == "kmnist"
    assert list(metrics["class_names"]) == list(sources.KMNIST_CLASSES)


def test_an_unknown_data_set_is_one_line_naming_the_choices(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--dataset", "cifar", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "'cifar' is not one of" in result.output
    assert "mnist" in result.output and "kmnist" in result.output

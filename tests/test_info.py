"""`cnnx info` says what `cnnx train` does with the same environment and options: the data set it uses,
or the very line it stops with, because both ask the loader's own search."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnx.cli import cli
from cnnx.data import ENV_VAR, IDX_FILES, sources

from helpers import write_blob_idx

TRAIN = ["train", "--model", "mlp", "--epochs", "1", "--batch-size", "8", "--quiet"]


def _image_folder(root):
    for split, count in (("train", 8), ("test", 2)):
        for label, name in enumerate(("left", "right")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                grey = np.full((30, 30), 255, np.uint8)
                grey[5:25, 2 + 15 * label : 12 + 15 * label] = 10 * i
                Image.fromarray(grey).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def places(tmp_path, monkeypatch):
    """No variable, an empty user cache, and a system copy of the blob data set."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "system").mkdir()
    monkeypatch.setattr(sources, "SYSTEM_DIR", write_blob_idx(tmp_path / "system"))
    return tmp_path


def _as_mnist(monkeypatch, directory):
    """Record the archives in ``directory`` as MNIST's published ones."""
    digests = {
        f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for p in IDX_FILES.values() for f in p
    }
    monkeypatch.setattr(sources, "MNIST_ARCHIVE_SHA256", digests)


def _setup(case, root, monkeypatch) -> list[str]:
    """The options (and environment) of ``case``; returns the options."""
    if case == "variable-points-nowhere":
        monkeypatch.setenv(ENV_VAR, str(root / "nowhere"))
        return []
    if case == "nothing-chosen":
        return []
    if case == "empty-data-dir":
        (root / "empty").mkdir()
        return ["--data-dir", str(root / "empty")]
    if case == "mnist-asked-of-fashion-files":
        (root / "other").mkdir()
        _as_mnist(monkeypatch, write_blob_idx(root / "other"))
        return ["--data-dir", str(root / "system")]  # the system copy's files are now MNIST's too
    if case == "image-folder":
        return ["--data-dir", str(_image_folder(root / "pictures"))]
    raise AssertionError(case)


def _what_info_says(options) -> tuple[str, str]:
    result = CliRunner().invoke(cli, ["info", *options])
    assert result.exit_code == 0, result.output
    verdict = [line.strip() for line in result.stdout.splitlines() if "cnnx train" in line]
    assert len(verdict) == 1, f"info gives no single verdict: {result.stdout}"
    if verdict[0].startswith("cnnx train would stop: "):
        return "stops", verdict[0].removeprefix("cnnx train would stop: ")
    assert verdict[0].startswith("cnnx train uses "), verdict[0]
    return "uses", verdict[0].removeprefix("cnnx train uses ").rsplit(": ", 1)[0]


def _what_train_does(options, out) -> tuple[str, str]:
    result = CliRunner().invoke(cli, [*TRAIN, *options, "--out", str(out)])
    if result.exit_code == 1:
        return "stops", result.stderr.strip().removeprefix("cnnx: error: ")
    assert result.exit_code == 0, result.output
    return "uses", json.loads((out / "metrics.json").read_text())["config"]["data_source"]


@pytest.mark.parametrize(
    "case, dataset",
    [("variable-points-nowhere", None), ("nothing-chosen", None), ("empty-data-dir", None),
     ("mnist-asked-of-fashion-files", "mnist"), ("image-folder", None)],
)  # fmt: skip
def test_info_and_train_follow_one_search_rule(places, monkeypatch, case, dataset):
    options = _setup(case, places, monkeypatch) + (["--dataset", dataset] if dataset else [])
    said, done = _what_info_says(options), _what_train_does(options, places / "run")
    assert said == done, f"info says {said}, train did {done}"


def test_a_variable_pointing_nowhere_is_reported_with_the_copy_that_exists(places, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(places / "nowhere"))
    verdict, message = _what_info_says([])
    assert verdict == "stops" and f"the system package {places / 'system'} has it (unset CNNX_DATA" in message

"""Training on one's own pictures: an image folder (train/<class>/*, test/<class>/*) loads with its folder
names as classes and every picture prepared as `cnnx predict` prepares it; a folder that breaks a rule is
one line naming what is wrong; `cnnx train --data-dir FOLDER` trains on it and records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnx.cli import cli
from cnnx.data import digest, folders, load_dataset, load_image_folder, prepare_image, write_idx
from cnnx.errors import ConfigError, DataError

from helpers import png_claiming

CLASSES = ("boot", "hat", "scarf")  # sorted, so label 0 is "boot"


def _picture(label: int, seed: int, size=(40, 32)) -> Image.Image:
    """A dark shape on white whose place depends on the class: left, middle or right third."""
    rng = np.random.default_rng(seed)
    grey = np.full(size[::-1], 255, np.uint8)
    left = 2 + label * size[0] // 3
    grey[6:26, left : left + size[0] // 4] = rng.integers(0, 80, (20, size[0] // 4))
    return Image.fromarray(grey)


def make_folder(root, per_class=(4, 2), suffixes=(".png", ".jpg", ".webp")):
    """An image folder of the three CLASSES with ``per_class`` pictures each in train and test, in
    several formats; returns it."""
    for split, count in zip(folders.SPLITS, per_class, strict=True):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                suffix = suffixes[i % len(suffixes)]
                options = {"lossless": True} if suffix == ".webp" else {}
                _picture(label, seed=i).save(root / split / name / f"{i:03d}{suffix}", **options)
    return root


def test_an_image_folder_loads_its_class_names_and_the_prepared_pictures(tmp_path):
    root = make_folder(tmp_path / "pictures")
    dataset = load_dataset(data_dir=root)
    assert dataset.class_names == CLASSES and dataset.source == f"image folder {root}"
    assert dataset.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    expected = [
        prepare_image(path)[0] for name in CLASSES for path in sorted((root / "train" / name).iterdir())
    ]
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape == (12, 28, 28)
    assert np.array_equal(dataset.train_images, np.stack(expected)), (
        "not the pictures as predict prepares them"
    )


def test_the_threads_do_not_change_the_arrays(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pictures", per_class=(9, 3))
    monkeypatch.setattr(folders, "READ_BLOCK", 4)
    arrays = []
    for threads in (1, 3):
        monkeypatch.setattr(folders, "READ_THREADS", threads)
        arrays.append(load_image_folder(root).train_images)
    assert np.array_equal(arrays[0], arrays[1])


def test_a_limit_keeps_a_balanced_subset_and_a_sixth_as_many_test_pictures(tmp_path):
    dataset = load_dataset(data_dir=make_folder(tmp_path / "pictures", per_class=(6, 4)), limit=9)
    assert np.bincount(dataset.train_labels).tolist() == [3, 3, 3]
    assert len(dataset.test_labels) == 2


def _broken(kind):
    def apply(root):
        if kind == "different classes":
            (root / "test" / "hat").rename(root / "test" / "cap")
        elif kind == "empty class":
            for path in (root / "train" / "scarf").iterdir():
                path.unlink()
        elif kind == "one class":
            for name in ("hat", "scarf"):
                for split in folders.SPLITS:
                    for path in (root / split / name).iterdir():
                        path.unlink()
                    (root / split / name).rmdir()
        elif kind == "unreadable picture":
            (root / "train" / "hat" / "001.jpg").write_text("not a picture")
        elif kind == "picture outside the classes":
            _picture(0, 0).save(root / "train" / "stray.png")
        elif kind == "tiff named png":
            _picture(0, 0).save(root / "test" / "boot" / "000.png", format="TIFF")
        elif kind == "decompression bomb":
            (root / "train" / "hat" / "000.png").write_bytes(png_claiming(10_000, 10_000))
        elif kind == "no test folder":
            (root / "test").rename(root / "validation")
        elif kind == "a FIFO":
            import os

            os.mkfifo(root / "train" / "boot" / "pipe.png")

    return apply


@pytest.mark.parametrize(
    "kind, fragment",
    [("different classes", "same class folders; only in train: hat; only in test: cap"),
     ("empty class", "train/scarf: an empty class folder"),
     ("one class", "train: expected 2 to 1000 class folders, found 1"),
     ("unreadable picture", "train/hat/001.jpg: not an image"),
     ("picture outside the classes", "train/stray.png: a picture outside the class folders"),
     ("tiff named png", "test/boot/000.png: not an image in a format cnnx reads"),
     ("decompression bomb", "train/hat/000.png: refused as a possible decompression bomb"),
     ("no test folder", "an image folder needs train/ and test/, each of class folders; test/ missing"),
     ("a FIFO", "train/boot/pipe.png: a FIFO")],
)  # fmt: skip
def test_a_folder_that_breaks_a_rule_is_one_line_naming_what_is_wrong(tmp_path, kind, fragment):
    root = make_folder(tmp_path / "pictures")
    _broken(kind)(root)
    with pytest.raises(DataError) as refused:
        load_dataset(data_dir=root)
    message = str(refused.value)
    assert fragment in message and "\n" not in message, message


def test_too_many_pictures_are_refused_before_any_is_decoded(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pictures")
    monkeypatch.setattr(folders, "MAX_IMAGES", 10)
    monkeypatch.setattr(folders, "prepare_image", lambda *a, **k: pytest.fail("decoded a picture"))
    with pytest.raises(DataError, match="more than 10 pictures"):
        load_dataset(data_dir=root)


def test_too_many_classes_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "MAX_CLASSES", 2)
    with pytest.raises(DataError, match="expected 2 to 2 class folders, found 3"):
        load_dataset(data_dir=make_folder(tmp_path / "pictures"))


def test_idx_files_in_the_folder_win_over_train_and_test_subfolders(tmp_path):
    from helpers import write_blob_idx

    root = write_blob_idx(make_folder(tmp_path / "pictures"))
    assert load_dataset(data_dir=root).source.endswith("(idx)")


def test_an_image_folder_asked_for_as_mnist_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is an image folder .* leave out --dataset mnist"):
        load_dataset("mnist", make_folder(tmp_path / "pictures"))


def test_reading_a_large_folder_shows_progress_on_stderr_unless_quiet(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "pictures", per_class=(4, 2))
    monkeypatch.setattr(folders, "READ_BLOCK", 5)
    monkeypatch.setattr(folders, "PROGRESS_EVERY", 10)
    load_dataset(data_dir=root)
    assert capsys.readouterr().err.splitlines() == [
        f"cnnx: reading image folder {root}: 10 of 18 pictures",
        f"cnnx: reading image folder {root}: 18 of 18 pictures",
    ]
    load_dataset(data_dir=root, quiet=True)
    assert capsys.readouterr().err == "", "quiet, yet progress on stderr"


def test_a_small_folder_reads_without_a_word(tmp_path, capsys):
    load_dataset(data_dir=make_folder(tmp_path / "pictures"))
    assert capsys.readouterr().err == ""


def test_cnnx_train_on_an_image_folder_uses_its_class_names_and_records_it(tmp_path):
    root = make_folder(tmp_path / "pictures", per_class=(8, 3))
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(root), "--model", "mlp", "--epochs", "1", "--batch-size", "8",
            "--limit", "18", "--out", str(out), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["class_names"] == list(CLASSES) and len(record["confusion_matrix"]) == 3
    assert record["config"]["data_source"] == f"image folder {root}"
    assert record["config"]["data_digest"] == digest(load_dataset(data_dir=root, limit=18))


def test_cnnx_info_lists_an_image_folder_as_train_reads_it(tmp_path):
    root = make_folder(tmp_path / "pictures")
    result = CliRunner().invoke(cli, ["info", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "image folder, 3 classes (boot, hat, scarf), 12 train / 6 test pictures" in result.stdout
    assert f"cnnx train uses image folder {root}" in result.stdout


def test_an_incomplete_set_of_idx_files_beside_class_folders_leaves_an_image_folder(tmp_path):
    root = make_folder(tmp_path / "pictures")
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))  # an incomplete set
    assert load_dataset(data_dir=root).source.startswith("image folder"), "an incomplete IDX set is no layout"

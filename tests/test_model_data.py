"""A model file says what its inputs and outputs mean (the data set, its class names, the image shape,
the pixel scaling), and every command that uses a model file goes by it: `evaluate` loads the run's own
data set, `predict` and the estimator name the classes as training did. Files from before format 3 load
as Fashion-MNIST models, as they always did."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import cnnx
from cnnx.cli import cli
from cnnx.data import CLASS_NAMES, write_idx
from cnnx.io import load_model
from cnnx.io.modelfile import read_archive
from cnnx.nn.datainfo import DataInfo
from cnnx.nn.presets import PRESETS
from cnnx.nn.saving import HEADER_KEY
from cnnx.sklearn import CNNClassifier

from helpers import blobs, write_blob_idx

THREE = ("circle", "square", "triangle")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    """The one error line of a refused command (exit status 1, nothing else on stderr, no traceback)."""
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cnnx: error: "), f"stderr: {lines}"
    return lines[0]


def three_class_folder(directory, names=THREE):
    """IDX files of three classes (blob labels 0-2) and a classes.txt naming them."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 150, 1), ("test", 60, 2)):
        images, labels = blobs(n * 10 // 3, seed)
        keep = labels < 3
        image_name, label_name = cnnx.data.IDX_FILES[split]
        write_idx(directory / image_name, images[keep])
        write_idx(directory / label_name, labels[keep])
    (directory / "classes.txt").write_text("\n".join(names) + "\n")
    return directory


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    result = invoke("train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("three")
    data = three_class_folder(base / "data")
    out = base / "run"
    result = invoke("train", "--data-dir", data, "--model", "mlp", "--epochs", "1", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out, data


def test_a_run_on_digits_evaluates_on_digits_by_default(digits_run):
    record = json.loads((digits_run / "metrics.json").read_text())
    result = invoke("evaluate", digits_run)
    assert result.exit_code == 0, result.output
    assert "digits" in result.output.splitlines()[0], result.output.splitlines()[0]
    accuracy = float(result.output.split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-4), "evaluate saw other data"


def test_a_digits_model_names_its_classes_as_digits_in_predict(digits_run, tmp_path):
    images, _ = blobs(3, 5)
    write_idx(tmp_path / "three-idx3-ubyte", images)
    result = invoke("predict", digits_run, tmp_path / "three-idx3-ubyte", "--format", "json")
    assert result.exit_code == 0, result.output
    named = {c["class"] for record in json.loads(result.stdout) for c in record["top"]}
    assert named <= {str(d) for d in range(10)}, f"a digits model named its classes {named}"


def test_a_three_class_run_evaluates_on_its_own_folder_with_its_class_names(three_class_run):
    out, _ = three_class_run
    result = invoke("evaluate", out)
    assert result.exit_code == 0, result.output
    for name in THREE:
        assert name in result.output, f"{name!r} missing from the report"
    assert "Trouser" not in result.output


def test_evaluating_a_model_on_a_data_set_with_other_classes_is_one_line(three_class_run, tmp_path):
    out, _ = three_class_run
    (tmp_path / "ten").mkdir()
    ten = write_blob_idx(tmp_path / "ten")
    line = error_line(invoke("evaluate", out, "--data-dir", ten))
    assert "3 classes" in line and "10" in line, line
    renamed = three_class_folder(tmp_path / "renamed", ("ring", "square", "triangle"))
    line = error_line(invoke("evaluate", out, "--data-dir", renamed))
    assert "'circle'" in line and "'ring'" in line, line


def test_evaluating_a_model_on_images_of_another_size_is_one_line(digits_run, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for split, n in (("train", 20), ("test", 10)):
        image_name, label_name = cnnx.data.IDX_FILES[split]
        images = np.zeros((n, 28, 28), np.uint8)
        write_idx(folder / image_name, images)
        write_idx(folder / label_name, (np.arange(n) % 10).astype(np.uint8))
    model = cnnx.build_model("seed", input_shape=(1, 14, 14))
    model.data_info = DataInfo("fashion-mnist", CLASS_NAMES, (1, 14, 14))
    model.save(tmp_path / "small.npz")
    line = error_line(invoke("evaluate", tmp_path / "small.npz", "--data-dir", folder))
    assert "(1, 14, 14)" in line and "1x28x28" in line, line


def test_the_model_file_of_a_run_carries_the_data_set_and_its_class_names(three_class_run):
    out, data = three_class_run
    header, _ = read_archive(out / "model.npz")
    assert header["data"]["classes"] == list(THREE)
    assert header["data"]["dataset"] == "fashion-mnist" and header["data"]["data_dir"] == str(data.resolve())
    assert load_model(out / "model.npz").data_info.classes == THREE


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_saves_and_loads_with_its_weights(preset, tmp_path):
    shape = (784,) if preset == "mlp" else (1, 28, 28)
    model = cnnx.build_model(preset, input_shape=shape, seed=3)
    model.save(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    x = blobs(4, 1)[0]
    assert back.input_shape == shape
    np.testing.assert_array_equal(back.predict_proba(x), model.predict_proba(x))


def test_an_mlp_on_flat_features_saves_and_every_command_loads_it(tmp_path):
    model = cnnx.build_model("mlp", input_shape=(784,))
    model.save(tmp_path / "flat.npz")
    images, _ = blobs(2, 1)
    write_idx(tmp_path / "x-idx3-ubyte", images)
    assert invoke("predict", tmp_path / "flat.npz", tmp_path / "x-idx3-ubyte").exit_code == 0
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")
    assert invoke("evaluate", tmp_path / "flat.npz", "--data-dir", data, "--limit", "20").exit_code == 0


def test_the_estimator_on_flat_features_saves_a_file_that_loads_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 20)), np.array(["low", "high", "mid"] * 20)
    estimator = CNNClassifier(model="mlp", epochs=1, random_state=0).fit(X, y)
    path = tmp_path / "est.npz"
    estimator.save_model(path)
    back = CNNClassifier.from_model_file(path)
    np.testing.assert_array_equal(back.predict(X), estimator.predict(X))
    model = load_model(path)
    assert model.data_info.classes == ("high", "low", "mid") and model.data_info.scaling == "none"
    line = error_line(invoke("predict", path, tmp_path))
    assert "numbers used as they are" in line, line
    line = error_line(invoke("evaluate", path))
    assert "arrays given to the estimator" in line, line


def test_the_estimator_on_images_names_its_classes_in_predict(tmp_path):
    images, labels = blobs(60, 1)
    names = np.array(["cat", "dog", "emu", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"])
    estimator = CNNClassifier(model="seed", epochs=1, random_state=0).fit(images, names[labels])
    estimator.save_model(tmp_path / "est.npz")
    write_idx(tmp_path / "x-idx3-ubyte", images[:2])
    result = invoke("predict", tmp_path / "est.npz", tmp_path / "x-idx3-ubyte", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {c["class"] for r in json.loads(result.stdout) for c in r["top"]} <= set(names)


def _as_format_2(path):
    """Rewrite a model file as cnnx wrote it before format 3: no data field, version 2."""
    with zipfile.ZipFile(path) as archive:
        arrays = {i.filename.removesuffix(".npy"): np.load(archive.open(i)) for i in archive.infolist()}
    header = json.loads(str(arrays[HEADER_KEY]))
    header.pop("data", None)
    header["version"] = 2
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    np.savez(path, **arrays)


def test_a_model_file_of_format_2_loads_with_fashion_mnist_names(tmp_path):
    path = tmp_path / "old.npz"
    cnnx.build_model("seed").save(path)
    _as_format_2(path)
    model = load_model(path)
    assert model.data_info.classes == CLASS_NAMES and model.data_info.dataset == "fashion-mnist"
    write_idx(tmp_path / "x-idx3-ubyte", blobs(1, 1)[0])
    result = invoke("predict", path, tmp_path / "x-idx3-ubyte", "--format", "json")
    assert {c["class"] for c in json.loads(result.stdout)[0]["top"]} <= set(CLASS_NAMES)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"dataset": "x", "classes": ["a"], "image_shape": None, "scaling": "none", "data_dir": None},
         "classes"),
        ({"dataset": "x", "classes": ["a\nb", "c"], "image_shape": None, "scaling": "none", "data_dir": None},
         "printable"),
        ({"dataset": "x", "classes": ["a", "b"], "image_shape": [1, 28], "scaling": "none", "data_dir": None},
         "image_shape"),
        ({"dataset": "x", "classes": ["a", "b"], "image_shape": None, "scaling": "x/2", "data_dir": None},
         "scaling"),
        ({"dataset": "x", "classes": ["a", "b"], "image_shape": None, "scaling": "none"}, "data must be"),
        ({"dataset": "x", "classes": ["a", "b"], "image_shape": None, "scaling": "none", "data_dir": None},
         "names 2 classes, and the model has 10 outputs"),
    ],
)  # fmt: skip
def test_a_tampered_data_field_is_one_line(tmp_path, data, fragment):
    path = tmp_path / "m.npz"
    cnnx.build_model("mlp").save(path)
    with zipfile.ZipFile(path) as archive:
        arrays = {i.filename.removesuffix(".npy"): np.load(archive.open(i)) for i in archive.infolist()}
    header = json.loads(str(arrays[HEADER_KEY]))
    header["data"] = data
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    line = error_line(invoke("predict", path, path))
    assert fragment in line, line


def test_predict_lists_at_most_as_many_classes_as_the_model_has(digits_run, tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", blobs(1, 1)[0])
    result = invoke("predict", digits_run, tmp_path / "x-idx3-ubyte", "--top", 10**8, "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["top"]) == 10


def test_a_preview_that_cannot_be_written_is_refused_before_any_work(digits_run, tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", blobs(1, 1)[0])
    result = invoke("predict", digits_run, tmp_path / "x-idx3-ubyte", "--preview", tmp_path / "no" / "p.png")
    line = error_line(result)
    assert str(tmp_path / "no" / "p.png") in line and ".tmp" not in line, line
    assert result.stdout == "", "it classified before refusing"


def test_a_file_name_with_a_newline_cannot_forge_a_line_of_predict(digits_run, tmp_path):
    forged = tmp_path / "a\nforged: Dress 1.000-idx3-ubyte"
    write_idx(forged, blobs(1, 1)[0])
    result = invoke("predict", digits_run, forged)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and "\\n" in result.stdout, result.stdout


def test_the_preview_keeps_thumbnails_of_large_originals(digits_run, tmp_path, monkeypatch):
    from PIL import Image

    import cnnx.training.plots as plots

    Image.fromarray(np.full((3000, 2000), 255, np.uint8)).save(tmp_path / "big.png")
    drawn = []
    monkeypatch.setattr(plots, "plot_preview", lambda items, path: drawn.extend(items))
    result = invoke("predict", digits_run, tmp_path / "big.png", "--preview", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert max(drawn[0][0].shape) <= 256, f"the preview kept a {drawn[0][0].shape} original"


def test_augmentations_show_refuses_an_unwritable_out_before_loading_data(tmp_path):
    out = tmp_path / "no" / "a.png"
    line = error_line(invoke("augmentations", "show", "--augment", "flip", "--out", out))
    assert ".tmp" not in line and "no directory" in line, line


def test_augmentations_show_asks_for_more_images_than_the_test_set_has(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data", train=20, test=5)
    result = invoke("augmentations", "show", "--augment", "flip", "--count", "32", "--data-dir", data,
                    "--out", tmp_path / "a.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "5 test images" in result.output, result.output


def test_a_mnist_run_trains_evaluates_and_predicts_with_digit_names(tmp_path):
    (tmp_path / "mnist").mkdir()
    data = write_blob_idx(tmp_path / "mnist")  # MNIST's file names; blobs stand in for its digits
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "mnist", "--data-dir", data, "--model", "mlp", "--epochs", "1",
                    "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(out / "model.npz").data_info.dataset == "mnist"
    report = invoke("evaluate", out)
    assert report.exit_code == 0 and "Trouser" not in report.output, report.output
    write_idx(tmp_path / "x-idx3-ubyte", blobs(2, 3)[0])
    result = invoke("predict", out, tmp_path / "x-idx3-ubyte", "--format", "json")
    named = {c["class"] for record in json.loads(result.stdout) for c in record["top"]}
    assert named <= {str(d) for d in range(10)}, named


def test_predict_warns_of_a_picture_with_almost_no_contrast(digits_run, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(tmp_path / "blank.png")
    result = invoke("predict", digits_run, tmp_path / "blank.png")
    assert result.exit_code == 0, result.output
    assert "almost no contrast" in result.stderr and "blank.png" in result.stderr, result.stderr


def test_an_image_folder_run_trains_evaluates_and_predicts_with_its_folder_names(tmp_path):
    from PIL import Image

    images, labels = blobs(90, 1)
    names = ("boot", "coat", "hat")
    for split, rows in (("train", range(0, 60)), ("test", range(60, 90))):
        for i in rows:
            folder = tmp_path / "photos" / split / names[labels[i] % 3]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    out = tmp_path / "run"
    result = invoke("train", "--data-dir", tmp_path / "photos", "--model", "mlp", "--epochs", "1",
                    "--batch-size", "16", "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = invoke("evaluate", out)
    assert report.exit_code == 0 and all(name in report.output for name in names), report.output
    picked = tmp_path / "photos" / "test" / "hat"
    result = invoke("predict", out, picked, "--format", "json")
    assert {c["class"] for r in json.loads(result.stdout) for c in r["top"]} <= set(names), result.stdout


def test_class_names_a_model_file_could_not_hold_are_refused_where_they_are_read(tmp_path):
    data = three_class_folder(tmp_path / "tabbed", ("a\tb", "square", "triangle"))
    line = error_line(invoke("train", "--data-dir", data, "--model", "mlp", "--out", tmp_path / "r"))
    assert "printable" in line and "classes.txt" in line, line
    assert not (tmp_path / "r").exists()


def test_loading_a_checkpoint_for_use_reads_no_optimizer_moment(tmp_path):
    from cnnx.errors import CheckpointError
    from cnnx.io.checkpoint import load_checkpoint, save_checkpoint
    from cnnx.optim import make_optimizer

    model = cnnx.build_model("mlp")
    optimizer = make_optimizer("adam", model, 1e-3)
    x, y = blobs(8, 1)
    logits, saved = model.forward(model.backend.to_device(x.reshape(8, 1, 28, 28) / 255, "float32"))
    _, dlogits = cnnx.softmax_cross_entropy(model.xp, logits, model.backend.to_device(y.astype("int64")))
    model.set_grads(model.backward(saved, dlogits)[1])
    optimizer.step()
    meta = {"epoch": 0, "batch": 0, "step": 1, "rng_state": {}, "history": [], "partial": {},
            "settings": {}, "optimizer": {}}  # fmt: skip
    path = save_checkpoint(tmp_path / "c.npz", model, optimizer, meta)
    with zipfile.ZipFile(path) as archive:
        arrays = {i.filename.removesuffix(".npy"): np.load(archive.open(i)) for i in archive.infolist()}
    moment = next(name for name in arrays if name.startswith("optim/m/"))
    arrays[moment] = np.full_like(arrays[moment], np.nan)  # the data no use of the model reads
    np.savez(path, **arrays)
    assert load_model(path).parameter_count() == model.parameter_count()
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)

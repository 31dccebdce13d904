"""Run figures: each is a readable PNG, drawn without pyplot, and the sample grid marks mistakes in red."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from cnnx.training import plots

from helpers import blobs

NAMES = [f"class {i}" for i in range(10)]


def read_png(path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)  # (height, width, channels) floats in [0, 1]


def red_pixels(image: np.ndarray) -> int:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.8) & (g < 0.3) & (b < 0.3)).sum())


def test_the_sample_grid_is_a_png_of_the_expected_size(tmp_path):
    images, labels = blobs(25, seed=0)
    image = read_png(plots.plot_samples(images, labels, labels, NAMES, tmp_path / "s.png"))
    assert image.shape[:2] == (1100, 1000), f"a 5x5 grid at 100 dpi should be 1100x1000, got {image.shape}"


def test_a_wrong_prediction_is_drawn_in_red_and_right_ones_are_not(tmp_path):
    images, labels = blobs(10, seed=0)
    right = read_png(plots.plot_samples(images, labels, labels, NAMES, tmp_path / "right.png"))
    wrong_predictions = labels.copy()
    wrong_predictions[4] = (labels[4] + 1) % 10
    wrong = read_png(plots.plot_samples(images, labels, wrong_predictions, NAMES, tmp_path / "wrong.png"))
    assert red_pixels(right) == 0, f"{red_pixels(right)} red pixels with every prediction right"
    assert red_pixels(wrong) > 20, f"only {red_pixels(wrong)} red pixels for a wrong prediction"


@pytest.mark.parametrize("count", [1, 3, 7])
def test_fewer_images_than_the_grid_still_make_a_figure(tmp_path, count):
    images, labels = blobs(count, seed=1)
    image = read_png(plots.plot_samples(images, labels, labels, NAMES, tmp_path / "s.png"))
    columns, rows = min(5, count), math.ceil(count / 5)
    assert image.shape[:2] == (round(220 * rows), 200 * columns), f"got {image.shape} for {count} images"


def test_curves_and_confusion_matrix_are_written_even_with_a_missing_test_loss(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.6, "test_loss": None, "test_accuracy": 0.0},
        {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": None, "test_accuracy": 0.0},
    ]
    curves = read_png(plots.plot_curves(history, tmp_path / "curves.png"))
    matrix = read_png(plots.plot_confusion_matrix(np.eye(10, dtype=int) * 7, NAMES, tmp_path / "cm.png"))
    assert curves.shape[:2] == (400, 1000) and matrix.size > 0, f"shapes {curves.shape}, {matrix.shape}"


def test_drawing_does_not_import_pyplot(tmp_path):
    # In a fresh interpreter: another test in this process may have imported pyplot for its own reasons.
    code = (
        "import sys, numpy as np\n"
        "from cnnx.training import plots\n"
        "images = np.zeros((3, 28, 28), np.uint8); labels = np.arange(3)\n"
        "plots.plot_samples(images, labels, labels, [str(i) for i in range(10)], sys.argv[1])\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.png")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "pyplot was imported: it would grab a global backend"


class Recorder:
    """Wraps matplotlib Axes methods to note each call's label (or text), drawing as before."""

    def __init__(self, monkeypatch, *names):
        from matplotlib.axes import Axes

        self.calls = {name: [] for name in names}
        for name in names:
            original = getattr(Axes, name)

            def wrapper(axes, *args, _name=name, _original=original, **kwargs):
                self.calls[_name].append((args, kwargs))
                return _original(axes, *args, **kwargs)

            monkeypatch.setattr(Axes, name, wrapper)

    def labels(self, name) -> list:
        return [kwargs.get("label") for _, kwargs in self.calls[name]]


VALIDATED_HISTORY = [
    {"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 20, "val_loss": loss, "val_accuracy": 0.6,
     "test_loss": loss, "test_accuracy": 0.6}
    for e, loss in enumerate([0.9, 0.7, None, 0.8], start=1)
]  # fmt: skip


def test_the_curves_draw_the_validation_split_beside_train_and_test(tmp_path, monkeypatch):
    drawn = Recorder(monkeypatch, "plot")
    plots.plot_curves(VALIDATED_HISTORY, tmp_path / "curves.png", best_epoch=2)
    assert drawn.labels("plot") == ["train", "validation", "test"] * 2, drawn.labels("plot")


def test_the_curves_mark_the_best_epoch_on_both_panels(tmp_path, monkeypatch):
    drawn = Recorder(monkeypatch, "axvline")
    plots.plot_curves(VALIDATED_HISTORY, tmp_path / "curves.png", best_epoch=2)
    assert [args[0] for args, _ in drawn.calls["axvline"]] == [2, 2]
    assert drawn.labels("axvline") == ["best epoch 2"] * 2


def test_the_step_curves_draw_training_loss_test_loss_and_test_accuracy(tmp_path, monkeypatch):
    drawn = Recorder(monkeypatch, "plot")
    curves = {"train": [[4, 2.1], [8, None], [12, 1.5]], "test": [[5, 2.0, 0.3], [10, None, 0.4]]}
    image = read_png(plots.plot_steps(curves, tmp_path / "steps.png"))
    assert image.shape[:2] == (400, 1000), image.shape
    assert len(drawn.calls["plot"]) == 3, drawn.labels("plot")


def dark_share(image: np.ndarray) -> float:
    return float((image[..., :3].max(axis=-1) < 0.1).mean())


def test_samples_are_drawn_light_on_black_as_the_model_sees_them(tmp_path):
    images = np.zeros((1, 28, 28), np.uint8)  # an empty (black) picture
    image = read_png(plots.plot_samples(images, np.zeros(1), np.zeros(1), NAMES, tmp_path / "s.png"))
    assert dark_share(image) > 0.2, f"{dark_share(image):.1%} of the figure is black: drawn dark on white?"


def test_a_confusion_matrix_of_a_thousand_classes_writes_no_cell_counts_and_no_names(tmp_path, monkeypatch):
    drawn = Recorder(monkeypatch, "text", "set_xticks")
    names = [f"class {i}" for i in range(1000)]
    matrix = np.random.default_rng(0).integers(0, 5, (1000, 1000))
    image = read_png(plots.plot_confusion_matrix(matrix, names, tmp_path / "cm.png"))
    assert not drawn.calls["text"], f"{len(drawn.calls['text'])} cell texts for 1000 classes"
    assert not drawn.calls["set_xticks"], "a tick for each of 1000 classes"
    assert image.shape[:2] == (700, 800), f"the figure grew to {image.shape[:2]}"


def test_a_confusion_matrix_of_ten_classes_shows_every_count_and_name(tmp_path, monkeypatch):
    drawn = Recorder(monkeypatch, "text", "set_xticks")
    plots.plot_confusion_matrix(np.eye(10, dtype=int) * 7, NAMES, tmp_path / "cm.png", title="test set")
    assert len(drawn.calls["text"]) == 100 and list(drawn.calls["set_xticks"][0][0][1]) == NAMES

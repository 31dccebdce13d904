"""Figures as PNG files: learning curves per epoch and per step, the confusion matrix, a grid of test
samples, and the preview of `cnnx predict`. Images are drawn as the model sees them: light on black.

matplotlib is imported lazily (``import cnnx`` stays quick and works without a display) and drives the
Agg canvas directly through ``matplotlib.figure.Figure`` instead of pyplot: pyplot's global backend and
figure registry would leak figures in a long-lived process and, switched to Agg from a library call,
would hijack the backend of a notebook that imported cnnx. Each PNG is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnx.fileio import atomic_write

from .names import CHECKPOINT, STEPS_FIGURE


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg whatever backend is configured
    return figure


def _save(figure, path) -> Path:
    path = Path(path)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png")
    return path


def _values(rows: Sequence, key) -> np.ndarray:
    """One column of ``rows`` (dicts or lists) as floats; None (a value that was not finite) is NaN."""
    return np.array([np.nan if row[key] is None else row[key] for row in rows], dtype=float)


# split -> (history key prefix, marker style, colour): the same colour for a split in every figure
SPLITS = {"train": ("train", "o-", "tab:blue"), "validation": ("val", "^-", "tab:orange"),
          "test": ("test", "s--", "tab:green")}  # fmt: skip
BEST_COLOUR = "tab:red"


def plot_curves(history: Sequence[dict], path, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch from a ``fit`` history: train, validation (when the rows have it) and
    test side by side, and a vertical line at ``best_epoch``, the one whose weights best.npz keeps."""
    epochs = [row["epoch"] for row in history]
    figure = _figure(10, 4)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, key, title in (
        (loss_axes, "loss", "cross-entropy loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        for split, (prefix, style, colour) in SPLITS.items():
            if history and f"{prefix}_{key}" in history[0]:
                axes.plot(epochs, _values(history, f"{prefix}_{key}"), style, color=colour, label=split)
        if best_epoch:
            axes.axvline(best_epoch, color=BEST_COLOUR, linestyle=":", label=f"best epoch {best_epoch}")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        if len(epochs) <= 20:
            axes.set_xticks(epochs)
        axes.grid(alpha=0.3)
        axes.legend()
    return _save(figure, path)


def plot_steps(curves: dict, path) -> Path:
    """A run's step curves (``metrics.json`` ``curves``): the training loss of every ``log_every`` steps
    and the test loss on the left, the test accuracy of every ``eval_every`` steps on the right."""
    figure = _figure(10, 4)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    train, test = curves.get("train", []), curves.get("test", [])
    if train:
        loss_axes.plot(_values(train, 0), _values(train, 1), "-", color=SPLITS["train"][2],
                       label="train (mean of the logged steps)")  # fmt: skip
    if test:
        steps = _values(test, 0)
        loss_axes.plot(steps, _values(test, 1), ".--", color=SPLITS["test"][2], label="test")
        accuracy_axes.plot(steps, _values(test, 2), ".--", color=SPLITS["test"][2], label="test")
    loss_axes.set(title="cross-entropy loss", xlabel="optimizer step")
    accuracy_axes.set(title="accuracy", xlabel="optimizer step")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    return _save(figure, path)


def plot_step_curves(series: Sequence[tuple], path, title: str) -> Path:
    """Several runs overlaid against optimizer steps: test accuracy on the left, training loss (log
    scale) on the right. ``series`` holds (label, [(step, accuracy)], [(step, loss)]) per run."""
    figure = _figure(10, 3.8)
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for label, test, train in series:
        if test:
            accuracy_axes.plot(*zip(*test, strict=True), marker=".", markersize=3, label=label)
        if train:
            loss_axes.plot(*zip(*train, strict=True), linewidth=1, label=label)
    accuracy_axes.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1))
    loss_axes.set(xlabel="optimizer step", ylabel="training loss (mean of the logged steps)")
    if any(train for _, _, train in series):
        loss_axes.set_yscale("log")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_augmentations(originals: np.ndarray, variants: np.ndarray, path, title: str) -> Path:
    """A grid: each row an original image (k, H, W), then its augmented versions (k, m, H, W)."""
    k, m = variants.shape[:2]
    figure = _figure(1.1 * (m + 1), 1.1 * k + 0.4)
    axes = figure.subplots(k, m + 1, squeeze=False)
    for row in range(k):
        for col in range(m + 1):
            image = originals[row] if col == 0 else variants[row, col - 1]
            axes[row, col].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_axis_off()
    axes[0, 0].set_title("original", fontsize=8)
    for col in range(1, m + 1):
        axes[0, col].set_title(f"draw {col}", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


MAX_COUNTED_CLASSES = 20  # up to this many classes each cell shows its count; past it, colour alone
MAX_NAMED_CLASSES = 40  # up to this many the ticks carry the class names; past it, class numbers


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path, title: str | None = None
) -> Path:
    """The confusion matrix as a heat map (rows = true class), with the counts in the cells and the names
    on the axes while they fit. The figure's size is fixed, whatever the number of classes."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    figure = _figure(8, 7)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    named = n <= MAX_NAMED_CLASSES
    if named:
        size = 8 if n <= MAX_COUNTED_CLASSES else 6
        axes.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=size)
        axes.set_yticks(range(n), class_names, fontsize=size)
    axes.set_xlabel("predicted class" + ("" if named else " (number)"))
    axes.set_ylabel("true class" + ("" if named else " (number)"))
    if title:
        axes.set_title(title, fontsize=10)
    if n <= MAX_COUNTED_CLASSES:
        # Dark text on light cells, light on dark, so every count stays readable.
        threshold = matrix.max(initial=0) / 2
        for i in range(n):
            for j in range(n):
                colour = "white" if matrix[i, j] > threshold else "black"
                axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8, color=colour)
    return _save(figure, path)


def plot_samples(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    path,
    count: int = 25,
    title: str | None = None,
) -> Path:
    """A grid of the first ``count`` images, light on black as the model sees them, each titled "true /
    predicted"; wrong predictions are in red. ``title`` (which weights predicted) goes above the grid."""
    count = min(count, len(images))
    columns = max(1, min(5, count))
    rows = max(1, -(-count // columns))
    # One mosaic in one axes, not a subplot per image: a 5x5 grid draws in a fifth of the time, and
    # training runs and the tests draw it at the end of every run. Each cell leaves room for its title.
    size, gap_x, gap_y = 28, 6, 16
    mosaic = np.full((rows * (size + gap_y) + 2, columns * (size + gap_x)), np.nan)
    heading = 0.3 if title else 0.0  # inches above the grid for the title
    height = 2.2 * rows + heading
    figure = _figure(2 * columns, height, layout=None)  # one axes filling the figure: nothing to lay out
    axes = figure.add_axes((0, 0, 1, 1 - heading / height))
    axes.axis("off")
    if title:
        figure.text(0.5, 1 - heading / height / 2, title, ha="center", va="center", fontsize=9)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (size + gap_y) + gap_y, column * (size + gap_x) + gap_x // 2
        mosaic[top : top + size, left : left + size] = np.asarray(images[index]).reshape(size, size)
        true, guess = int(labels[index]), int(predictions[index])
        wrong = true != guess
        axes.text(
            left + size / 2,
            top - 1,
            f"{class_names[true]}\n→ {class_names[guess]}{' ✗' if wrong else ''}",
            ha="center",
            va="bottom",
            fontsize=8,
            color="red" if wrong else "black",
        )
    from matplotlib import colormaps

    colours = colormaps["gray"].with_extremes(bad="white")  # light on black; the NaN gaps stay white
    axes.imshow(mosaic, cmap=colours, vmin=0, vmax=255, interpolation="nearest")
    return _save(figure, path)


def weights_title(weights: dict, epochs: int) -> str:
    """Which weights a figure shows, from a record's ``results_of``: "best.npz: best epoch 13 of 15"."""
    if weights["file"] == CHECKPOINT:
        return f"model.npz: epoch {weights['epoch']}"
    return f"{weights['file'] or 'best weights'}: best epoch {weights['epoch']} of {epochs}"


def plot_run(run, predictions) -> None:
    """The figures of a finished :class:`~cnnx.training.loop.Run` in its directory: curves.png (every
    epoch, the best one marked), steps.png (with step curves), and confusion_matrix.png and samples.png
    of ``predictions``, those of the weights ``run.results_of`` names."""
    from .metrics import confusion_matrix

    out, names, labels = run.out, list(run.class_names), run.test_labels
    best = run.early.best_epoch if run.early is not None else None
    plot_curves(run.history, out / "curves.png", best_epoch=best)
    if run.curves["train"] or run.curves["test"]:
        plot_steps(run.curves, out / STEPS_FIGURE)
    title = weights_title(run.results_of, len(run.history))
    matrix = confusion_matrix(labels, predictions, len(names))
    plot_confusion_matrix(matrix, names, out / "confusion_matrix.png", title=f"test set, {title}")
    plot_samples(run.test_images, labels, predictions, names, out / "samples.png", title=title)


PREVIEW_ROWS = 32  # inputs drawn at most; a preview of hundreds of files would be unreadable


def plot_preview(items: Sequence[tuple], path) -> Path:
    """For ``cnnx predict --preview``: each input as it was read (grey) beside what the model saw (the
    prepared 28x28, light on black), with the predicted class. ``items`` are (original, prepared,
    record) with a record of ``cnnx predict``'s JSON output; the first :data:`PREVIEW_ROWS` are drawn."""
    items = list(items)[:PREVIEW_ROWS]
    figure = _figure(6, 1.8 * len(items))
    grid = figure.subplots(len(items), 2, squeeze=False)
    for (original, prepared, record), (left, right) in zip(items, grid, strict=True):
        left.imshow(original, cmap="gray", vmin=0, vmax=255)
        right.imshow(prepared, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        name = Path(record["path"]).name + ("" if record["index"] is None else f"[{record['index']}]")
        best = record["top"][0]
        left.set_title(f"{name} ({'x'.join(map(str, record['preprocessing']['source_size']))})", fontsize=8)
        right.set_title(f"model sees → {best['class']} {best['probability']:.2f}", fontsize=8)
        for axes in (left, right):
            axes.set_xticks([])
            axes.set_yticks([])
    return _save(figure, path)

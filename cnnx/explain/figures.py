"""The figures of ``cnnx explain``, each from arrays :mod:`cnnx.explain` computed (matplotlib's Agg canvas,
imported only here, as the run figures do)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cnnx.training.plots import _figure, _save


def _grey(axis, image, title: str | None = None) -> None:
    axis.imshow(image, cmap="gray", vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)


def _upsampled(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A coarse map stretched to ``size``: each pixel takes the cell it falls in."""
    rows = np.arange(size[0]) * cam.shape[0] // size[0]
    cols = np.arange(size[1]) * cam.shape[1] // size[1]
    return cam[rows][:, cols]


def plot_filters(weights: np.ndarray, path, title: str) -> Path:
    """The first convolution's filters as a grid (each input channel's kernel averaged), on one symmetric
    diverging scale with its colour bar."""
    kernels = weights.mean(axis=1)
    count = len(kernels)
    cols = min(8, count)
    rows = math.ceil(count / cols)
    figure = _figure(1.2 * cols + 1.0, 1.2 * rows + 0.8)
    axes = figure.subplots(rows, cols, squeeze=False)
    bound = float(np.abs(kernels).max()) or 1.0
    shown = None
    for i, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if i < count:
            shown = axis.imshow(kernels[i], cmap="RdBu_r", vmin=-bound, vmax=bound)
            axis.set_title(f"filter {i}", fontsize=7)
        else:
            axis.axis("off")
    figure.colorbar(shown, ax=axes, shrink=0.8, label="weight")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_activations(images: np.ndarray, maps: np.ndarray, path, title: str, channels: int = 8) -> Path:
    """One block's maps: a row per image (the image first), its first ``channels`` channels."""
    shown_channels = min(channels, maps.shape[1])
    figure = _figure(1.1 * (shown_channels + 1) + 0.6, 1.2 * len(images) + 0.7)
    axes = figure.subplots(len(images), shown_channels + 1, squeeze=False)
    for row, (image, sample) in enumerate(zip(images, maps, strict=True)):
        _grey(axes[row, 0], image, "input" if row == 0 else None)
        for c in range(shown_channels):
            axis = axes[row, c + 1]
            axis.imshow(sample[c], cmap="viridis")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"channel {c}", fontsize=7)
    figure.suptitle(f"{title} (each map on its own scale)", fontsize=10)
    return _save(figure, path)


def plot_heat(images: np.ndarray, heat: np.ndarray, labels: list[str], path, title: str, what: str) -> Path:
    """Each image, its map (``what``) with a colour bar, and the map over the image."""
    figure = _figure(7.2, 2.2 * len(images) + 0.6)
    axes = figure.subplots(len(images), 3, squeeze=False)
    for row, (image, h, label) in enumerate(zip(images, heat, labels, strict=True)):
        h = _upsampled(h, image.shape) if h.shape != image.shape else h
        _grey(axes[row, 0], image, label)
        top = float(h.max()) if float(h.max()) > 0 else 1.0  # an all-zero map (no support) shows black
        shown = axes[row, 1].imshow(h, cmap="inferno", vmin=0, vmax=top)
        axes[row, 1].set_xticks([])
        axes[row, 1].set_yticks([])
        axes[row, 1].set_title(what if float(h.max()) > 0 else f"{what}: zero everywhere", fontsize=8)
        figure.colorbar(shown, ax=axes[row, 1], shrink=0.8)
        _grey(axes[row, 2], image, "over the image")
        axes[row, 2].imshow(h, cmap="inferno", alpha=0.55, vmin=0, vmax=top)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_gallery(images: np.ndarray, captions: list[str], path, title: str) -> Path:
    """A grid of images, each with its caption (true and predicted classes)."""
    count = len(images)
    cols = min(4, max(count, 1))
    rows = max(1, math.ceil(count / cols))
    figure = _figure(2.3 * cols, 2.4 * rows + 0.5)
    axes = figure.subplots(rows, cols, squeeze=False)
    for i, axis in enumerate(axes.flat):
        if i < count:
            _grey(axis, images[i], captions[i])
        else:
            axis.axis("off")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_feature_map(points: np.ndarray, labels: np.ndarray, names: list[str], path, title: str) -> Path:
    """The 2-D map of the features, one colour per class, with a legend of the class names."""
    from matplotlib import colormaps

    figure = _figure(7.5, 6.0)
    axis = figure.subplots()
    colours = colormaps["tab10" if len(names) <= 10 else "tab20"]
    for k, name in enumerate(names):
        mine = labels == k
        axis.scatter(points[mine, 0], points[mine, 1], s=4, color=colours(k % colours.N), label=name)
    axis.legend(markerscale=3, fontsize=7, loc="best")
    axis.set_xlabel("component 1")
    axis.set_ylabel("component 2")
    axis.set_title(title, fontsize=10)
    return _save(figure, path)

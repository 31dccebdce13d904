"""``explain_run``: every figure of ``cnnx explain`` for one run (or model file), and an ``index.html``
that shows them. The model is the run's own (best.npz when it kept one, as ``cnnx evaluate`` takes
it), the data its own data set, the class names its own; pictures given by the user are prepared as
``cnnx predict`` prepares them."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from cnnx.errors import ConfigError
from cnnx.fileio import atomic_write

from . import (
    activation_maps,
    cam_layer,
    feature_map,
    first_filters,
    grad_cam,
    hires_cam,
    penultimate_features,
    saliency,
)
from . import top_losses as find_top_losses
from .figures import plot_activations, plot_feature_map, plot_filters, plot_gallery, plot_heat

SHOWN = 4  # test items explained when no pictures are given
GALLERY = 16  # items of the top-losses gallery
MAP_ITEMS = 2000  # test items placed on the feature map


def explain_run(model, test_images, test_labels, out, *, pictures=None, method: str = "pca",
                map_items: int = MAP_ITEMS) -> dict:  # fmt: skip
    """Write every figure for ``model`` into the folder ``out`` (made if needed), with an index.html.
    ``test_images``/``test_labels``: the model's own test set (host arrays); ``pictures``: prepared
    images ((N, H, W) floats in [0, 1]) to explain instead of the first test items. Returns
    ``{"figures": [(title, file name, caption)], "skipped": [(title, reason)], "index": path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = model.output_shapes()[-1][0]
    names = list(model.data_info.classes) if model.data_info is not None else [str(i) for i in range(classes)]
    images = _shown(model, test_images, pictures)
    figures, skipped = [], []

    def attempt(title: str, draw) -> None:
        try:
            figures.extend(draw())
        except ConfigError as exc:  # a figure this model cannot have: say why, draw the others
            skipped.append((title, str(exc)))

    attempt("First filters", lambda: _filters(model, out))
    attempt("Activation maps", lambda: _activations(model, images, out))
    attempt("Saliency", lambda: _saliency(model, images, names, out))
    attempt("Grad-CAM", lambda: _grad_cam(model, images, names, out))
    probabilities = model.predict_proba(test_images)
    attempt("Top losses", lambda: _gallery(probabilities, test_images, test_labels, names, out))
    attempt("Feature map", lambda: _features(model, test_images[:map_items], test_labels[:map_items], names,
                                             method, out))  # fmt: skip
    index = _index(model, figures, skipped, out)
    return {"figures": figures, "skipped": skipped, "index": index}


def _shown(model, test_images, pictures) -> np.ndarray:
    """The images explained, (N, H, W) floats in [0, 1]."""
    if pictures is not None and len(pictures):
        return np.asarray(pictures, np.float64)
    x = np.asarray(test_images[:SHOWN])
    x = x.astype(np.float64) / 255 if x.dtype == np.uint8 else x.astype(np.float64)
    return x.reshape((len(x), *model.input_shape))[:, 0] if len(model.input_shape) == 3 else x


def _as_inputs(model, images: np.ndarray) -> np.ndarray:
    return images.reshape((len(images), *model.input_shape))


def _filters(model, out: Path):
    weights = first_filters(model)
    plot_filters(
        weights, out / "filters.png", f"{model.name}: the first convolution's {len(weights)} filters"
    )
    caption = "Each filter's kernel, averaged over its input channels; red positive, blue negative weights."
    return [("First filters", "filters.png", caption)]


def _activations(model, images, out: Path):
    maps = activation_maps(model, _as_inputs(model, images))
    if not maps:
        raise ConfigError(f"{model.name} has no convolutional block: there are no activation maps")
    shown = []
    for k, (name, values) in enumerate(maps, start=1):
        file = f"activations-{k}.png"
        plot_activations(images, values, out / file, f"{model.name}: {name}, {values.shape[1]} channels")
        shown.append((f"Activation maps, block {k}", file, f"The first channels of {name}, per image."))
    return shown


def _labelled(probabilities_row, chosen: int, names) -> str:
    return f"{names[chosen]} ({probabilities_row[chosen]:.2f})"


def _saliency(model, images, names, out: Path):
    heat, chosen = saliency(model, _as_inputs(model, images))
    p = model.predict_proba(_as_inputs(model, images))
    labels = [_labelled(p[i], c, names) for i, c in enumerate(chosen)]
    plot_heat(images, heat, labels, out / "saliency.png", f"{model.name}: saliency of the predicted class",
              "|d score / d pixel|")  # fmt: skip
    caption = "How much each pixel moves the predicted class's score (the gradient's magnitude)."
    return [("Saliency", "saliency.png", caption)]


def _grad_cam(model, images, names, out: Path):
    x = _as_inputs(model, images)
    cams, chosen = grad_cam(model, x)
    fine, _ = hires_cam(model, x, chosen)
    p = model.predict_proba(x)
    labels = [_labelled(p[i], c, names) for i, c in enumerate(chosen)]
    last = cam_layer(model)
    title = f"{model.name}: Grad-CAM on the last convolutional block (layer {last})"
    plot_heat(images, cams, labels, out / "gradcam.png", title, "Grad-CAM")
    title = f"{model.name}: HiResCAM, the element-wise Grad-CAM, on layer {last}"
    plot_heat(images, fine, labels, out / "hirescam.png", title, "HiResCAM")
    zero = int((cams.reshape(len(cams), -1).max(axis=1) <= 0).sum())
    caption = (
        "Where the last convolutional block's maps, weighted by their gradients averaged over the "
        "positions, support the prediction."
    )
    if zero:
        caption += (
            f" For {zero} of the {len(cams)} images the weighted sum is negative everywhere, so the map is "
            "zero: the averaged gradients cancel (HiResCAM below does not average)."
        )
    fine_caption = (
        "Each position's maps times their own gradients, summed over the channels: the block's "
        "first-order share of the score, position by position."
    )
    return [("Grad-CAM", "gradcam.png", caption), ("Grad-CAM, element-wise (HiResCAM)", "hirescam.png",
            fine_caption)]  # fmt: skip


def _gallery(probabilities, test_images, test_labels, names, out: Path):
    labels = np.asarray(test_labels, np.int64)
    picked = find_top_losses(probabilities, labels, GALLERY)
    if len(picked) == 0:
        raise ConfigError("the model classifies every test item correctly: there are no top losses")
    images = np.asarray(test_images[picked], np.float64)
    images = images / 255 if np.asarray(test_images[:1]).dtype == np.uint8 else images
    images = images.reshape(len(picked), *images.shape[-2:])
    captions = [f"#{i}: true {names[labels[i]]}\npredicted {names[probabilities[i].argmax()]} "
                f"({probabilities[i].max():.2f})" for i in picked]  # fmt: skip
    title = "The misclassified test items with the largest loss (the least probability on the true class)"
    plot_gallery(images, captions, out / "top-losses.png", title)
    caption = "The misclassified test items with the largest loss, with the true and predicted classes."
    return [("Top losses", "top-losses.png", caption)]


def _features(model, images, labels, names, method: str, out: Path):
    features = penultimate_features(model, images)
    points = feature_map(features, method)
    file = f"features-{method}.png"
    what = "PCA" if method == "pca" else "t-SNE"
    title = f"{model.name}: the classifier's input features of {len(images):,} test items ({what})"
    plot_feature_map(points, np.asarray(labels, np.int64), names, out / file, title)
    return [("Feature map", file, f"The last layer's input features placed in 2-D by {what}, by true class.")]


def _index(model, figures, skipped, out: Path) -> Path:
    parts = [f"<h1>cnnx explain: {html.escape(model.name)}</h1>"]
    for title, file, caption in figures:
        image = f'<img src="{html.escape(file)}" alt="{html.escape(title)}" style="max-width:100%">'
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>{image}")
    for title, reason in skipped:
        parts.append(f"<h2>{html.escape(title)}</h2><p>Not drawn: {html.escape(reason)}</p>")
    page = "<!doctype html><meta charset='utf-8'><title>cnnx explain</title><body>" + "\n".join(parts)
    path = out / "index.html"
    with atomic_write(path) as handle:
        handle.write(page.encode())
    return path

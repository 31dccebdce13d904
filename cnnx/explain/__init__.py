"""Seeing inside a trained model: its first filters, its activation maps, saliency, Grad-CAM, the test
items it gets most confidently wrong, and a 2-D map of its penultimate features.

Every gradient here comes from the model's own backward, in evaluation mode: :func:`frozen` copies the
model with each batch norm replaced by the per-channel affine map it applies in evaluation
(``x * scale + shift``, from its running averages) and each dropout by the identity, so that a
forward that keeps what backward needs computes exactly the evaluation output (``model(x)``), and
the backward differentiates that. The model itself is never changed.

The figures are drawn by :mod:`cnnx.explain.figures`; ``cnnx explain RUN`` writes them all with an
``index.html``.

Mathematics: docs/math.md#explanations
"""

from __future__ import annotations

import copy

import numpy as np  # host: results for figures live on the host

from cnnx.errors import ConfigError
from cnnx.nn.layers.base import Layer
from cnnx.nn.layers.conv import Conv2D
from cnnx.nn.layers.dense import Dense
from cnnx.nn.layers.dropout import Dropout
from cnnx.nn.layers.normalization import _BatchNorm
from cnnx.nn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

POOLING = (MaxPool2D, AvgPool2D, GlobalAvgPool2D)


class _Affine(Layer):
    """What a batch norm computes in evaluation, ``x * scale + shift`` per feature, with the backward
    ``dx = dy * scale`` (its parameters are not trained here)."""

    def __init__(self, norm: _BatchNorm):
        super().__init__(backend=norm.backend, dtype=norm.dtype)
        xp = self.xp
        scale = norm.params["gamma"] / xp.sqrt(norm.buffers["running_var"] + norm.eps)
        self.scale, self.shift = scale, norm.params["beta"] - norm.buffers["running_mean"] * scale

    def _shaped(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x, train=True, draws=None):
        return x * self._shaped(self.scale, x.ndim) + self._shaped(self.shift, x.ndim), None

    def backward(self, saved, dy, need_dx=True):
        return (dy * self._shaped(self.scale, dy.ndim) if need_dx else None), {}


class _Identity(Layer):
    """Dropout in evaluation."""

    def forward(self, x, train=True, draws=None):
        return x, None

    def backward(self, saved, dy, need_dx=True):
        return dy, {}


def frozen(model):
    """A copy of ``model`` whose training forward computes its evaluation output (see the module's
    docstring); its arrays are copies, so nothing done with it reaches the model."""
    twin = copy.deepcopy(model, memo={id(model.backend): model.backend, id(model.xp): model.xp})

    def replace(layer):
        if isinstance(layer, _BatchNorm):
            return _Affine(layer)
        if isinstance(layer, Dropout):
            return _Identity(backend=layer.backend, dtype=layer.dtype)
        for name, child in layer.children().items():
            new = replace(child)
            if new is not child:
                if hasattr(layer, "layers"):
                    layer.layers[int(name)] = new
                else:
                    setattr(layer, name, new)
        return layer

    return replace(twin)


def _device(model, images):
    """Host images as the model's inputs on its device: uint8 pixels scaled to [0, 1], as training."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255 if x.dtype == np.uint8 else x
    return model.backend.to_device(x.reshape((len(x), *model.input_shape)), model.dtype)


def first_filters(model) -> np.ndarray:
    """The first convolution's weights (out_channels, in_channels, k, k), on the host."""
    for _, layer in model.named_layers():
        if isinstance(layer, Conv2D):
            return model.backend.to_host(layer.params["W"])
    raise ConfigError(f"{model.name} has no convolution: there are no filters to show")


def blocks(model) -> list[int]:
    """The indices of the model's top-level layers whose outputs end its convolutional blocks: a map
    (not a pooling layer's) that is pooled next, flattened next, resized next, or last."""
    layers, shapes = model.layers, [shape for _, shape in _top_level_shapes(model)]
    found = []
    for i, shape in enumerate(shapes):
        if len(shape) != 3 or isinstance(layers[i], POOLING):
            continue
        last = i + 1 == len(layers)
        if last or isinstance(layers[i + 1], POOLING) or shapes[i + 1][1:] != shape[1:]:
            found.append(i)
    return found


def _top_level_shapes(model):
    shape, out = tuple(model.input_shape), []
    for layer in model.layers:
        shape = layer.output_shape(shape)
        out.append((layer, shape))
    return out


def activation_maps(model, images) -> list[tuple[str, np.ndarray]]:
    """For each convolutional block (:func:`blocks`): its name and its maps (N, C, H, W) for ``images``."""
    x = _device(model, images)
    wanted, out = set(blocks(model)), []
    for i, layer in enumerate(model.layers):
        x = layer(x)
        if i in wanted:
            out.append(
                (f"block {len(out) + 1} (after layer {i}, {type(layer).__name__})", model.backend.to_host(x))
            )
    return out


def saliency(model, images, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """``(|d score / d input|, classes)``: the magnitude of the gradient of each image's class score (the
    logit of ``classes``, by default the predicted class) with respect to its pixels, the largest over
    the channels, (N, H, W) on the host; through the model's own backward in evaluation mode."""
    twin = frozen(model)
    x = _device(model, images)
    logits, saved = twin.forward(x, train=True)
    host = model.backend.to_host(logits)
    chosen = host.argmax(axis=1) if classes is None else np.asarray(classes, np.int64)
    seed = np.zeros(host.shape)
    seed[np.arange(len(host)), chosen] = 1.0
    dx, _ = twin.backward(saved, model.backend.to_device(seed, model.dtype))
    grad = np.abs(model.backend.to_host(dx)).reshape((len(host), *model.input_shape))
    return (grad.max(axis=1) if grad.ndim == 4 else grad), chosen


def grad_cam(model, images, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """``(maps, classes)``: Grad-CAM on the last convolutional block (:func:`cam_layer`),
    ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the mean over positions of ``d score / d A_k``,
    (N, h, w) on the host at that layer's resolution. ConfigError (one line) for a model without a
    convolutional block.

    Averaging the gradient over the positions first can cancel it: a channel whose gradient is positive
    where it is active and negative elsewhere gets a negative weight, and the whole map can come out
    zero although the block holds the class's evidence (batch-normalised models show it often). See
    :func:`hires_cam`, which does not average."""
    maps, grads, chosen = _cam_parts(model, images, classes)
    alpha = grads.mean(axis=(2, 3))
    return np.maximum(np.einsum("nk,nkhw->nhw", alpha, maps), 0), chosen


def hires_cam(model, images, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """``(maps, classes)``: the element-wise variant of Grad-CAM (HiResCAM, Draelos and Carin, 2020),
    ``ReLU(sum_k dscore/dA_k * A_k)`` at the same layer, (N, h, w) on the host. Before the ReLU its sum
    over the positions is the first-order share of the score the block carries: where the rest of the
    network is linear in the block's maps (pooling, flattening, dense), exactly the score less the
    last bias."""
    maps, grads, chosen = _cam_parts(model, images, classes)
    return np.maximum((grads * maps).sum(axis=1), 0), chosen


def _cam_parts(model, images, classes):
    """The maps ``A`` of :func:`cam_layer` and ``d score / d A`` (both (N, K, h, w) on the host), and
    the classes scored (the predicted ones unless ``classes`` is given); in evaluation mode."""
    found = blocks(model)
    if not found:
        raise ConfigError(f"Grad-CAM needs a convolutional block, and {model.name} has none")
    last, twin = cam_layer(model, found), frozen(model)
    x, kept = _device(model, images), []
    for layer in twin.layers:
        x, saved = layer.forward(x, train=True)
        kept.append((x, saved))
    host = model.backend.to_host(x)
    chosen = host.argmax(axis=1) if classes is None else np.asarray(classes, np.int64)
    seed = np.zeros(host.shape)
    seed[np.arange(len(host)), chosen] = 1.0
    grad = model.backend.to_device(seed, model.dtype)
    for i in range(len(twin.layers) - 1, last, -1):
        grad, _ = twin.layers[i].backward(kept[i][1], grad)
    return model.backend.to_host(kept[last][0]), model.backend.to_host(grad), chosen


def cam_layer(model, found=None) -> int:
    """The top-level layer Grad-CAM reads: the end of the last convolutional block, or the pooling
    right after it when that keeps a map (coarser, as the common implementations for VGG take)."""
    last = (blocks(model) if found is None else found)[-1]
    after = last + 1
    if after < len(model.layers) and isinstance(model.layers[after], (MaxPool2D, AvgPool2D)):
        return after
    return last


def top_losses(probabilities, labels, count: int = 16) -> np.ndarray:
    """The indices of the ``count`` misclassified items with the largest cross-entropy loss (the model
    most confidently wrong first)."""
    p = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    loss = -np.log(np.maximum(p[np.arange(len(p)), labels], 1e-300))
    wrong = np.flatnonzero(p.argmax(axis=1) != labels)
    return wrong[np.argsort(-loss[wrong], kind="stable")][:count]


def penultimate_features(model, images, batch_size: int = 500) -> np.ndarray:
    """The input of the model's last layer (its classifier's features), (N, features) on the host."""
    if not isinstance(model.layers[-1], Dense):
        raise ConfigError(f"{model.name} does not end in a Dense classifier: no penultimate features to map")
    out = []
    for start in range(0, len(images), batch_size):
        x = _device(model, images[start : start + batch_size])
        for layer in model.layers[:-1]:
            x = layer(x)
        out.append(model.backend.to_host(x).reshape(len(x), -1))
    return np.concatenate(out)


def feature_map(features, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Features (N, F) placed in 2-D by PCA or t-SNE (scikit-learn)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca").fit_transform(features)
    raise ConfigError(f"a feature map is made by pca or tsne, not {method!r}")

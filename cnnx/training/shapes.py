"""What a model must be for a run to train it: a classifier, whose output per sample is a vector of class
scores, taking samples of the data set's shape. Both are checked before a run claims its directory, so
a model that could only fail in the middle of its first step leaves nothing behind."""

from __future__ import annotations

import math

from cnnx.errors import ConfigError


def check_classifier(model) -> int:
    """The number of classes ``model`` scores; a one-line ConfigError unless its output per sample is a
    vector of at least 2 class scores."""
    shape = tuple(model.output_shapes()[-1])
    if len(shape) == 1 and shape[0] >= 2:
        return shape[0]
    layers = getattr(model, "layers", None)
    last = f" (after its last layer, {type(layers[-1]).__name__})" if layers else ""
    wanted = "a vector of at least 2 class scores" if len(shape) == 1 else "a vector of class scores"
    raise ConfigError(
        f"model: its output per sample is {shape}{last}, not {wanted}: end it with a Dense layer with "
        "as many outputs as there are classes"
    )


def check_input_shape(model, images) -> None:
    """A one-line ConfigError unless the model takes samples like the data set's ``images`` (N, ...):
    the same number of values per sample and, when both are images, the same height and width. A model
    may take a flattened sample, and a (1, H, W) model grey (H, W) images."""
    wanted, given = tuple(model.input_shape), tuple(images.shape[1:])
    same_size = math.prod(wanted) == math.prod(given)
    if same_size and (len(wanted) < 2 or len(given) < 2 or wanted[-2:] == given[-2:]):
        return
    as_chw = (1, *given) if len(given) == 2 else given
    described = " x ".join(map(str, as_chw)) + (" (channels, height, width)" if len(as_chw) == 3 else "")
    raise ConfigError(
        f"input_shape {list(wanted)} does not fit the data set's samples, {described}: use "
        f"input_shape = {list(as_chw)}"
    )

"""The numerics: pure ``xp`` kernels (:mod:`~cnnx.nn.functional`), initialisation, the loss, random
streams, the layer registry, the layers, the Sequential model, presets and the model-file writer.

Nothing here imports from the packages above it (optim, data, io, training, bench, cli); below it is
only :mod:`cnnx.backends`.
"""

from . import functional, init, layers, losses, random, registry
from .layers import *  # noqa: F403  (every registered layer type, see cnnx.nn.layers)
from .layers import __all__ as _layer_names
from .losses import softmax_cross_entropy
from .model import IMAGE_SHAPE, Sequential, build_from_architecture
from .presets import PRESETS, build_model, layer
from .registry import REGISTRY, register_layer

__all__ = [
    *_layer_names,
    "IMAGE_SHAPE",
    "PRESETS",
    "REGISTRY",
    "Sequential",
    "build_from_architecture",
    "build_model",
    "functional",
    "init",
    "layer",
    "layers",
    "losses",
    "random",
    "register_layer",
    "registry",
    "softmax_cross_entropy",
]

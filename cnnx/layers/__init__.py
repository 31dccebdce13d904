"""Layers: each holds its backend, ``params`` and ``grads``; forward and backward sit side by side."""

from .activations import Flatten, ReLU
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .pooling import MaxPool2D

# Name -> class, for rebuilding a model from its JSON architecture description (never from pickle).
REGISTRY: dict[str, type[Layer]] = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, Dense, ReLU, Flatten)}

__all__ = ["REGISTRY", "Conv2D", "Dense", "Flatten", "Layer", "MaxPool2D", "ReLU"]

"""Layers: one file per family, each layer registered once (:func:`cnnx.nn.registry.register_layer`).

Every registered layer type of this package is exported by name below (``tests/test_registry.py``
keeps the list equal to the registry), so a new layer is its file and one line here.
"""

from .activations import Flatten, ReLU
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .recurrent import GRU
from .residual import Residual

__all__ = [
    "Layer",
    "ReLU",
    "Flatten",
    "Conv2D",
    "Dense",
    "Dropout",
    "BatchNorm1D",
    "BatchNorm2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "GRU",
    "Residual",
]

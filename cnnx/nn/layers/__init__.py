"""Layers: one file per family, each layer registered once (:func:`cnnx.nn.registry.register_layer`).

Every module in this package is imported here and every registered layer type is exported by name, so
a new layer is one new file: its class and its registration.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ..registry import REGISTRY as _REGISTRY
from .base import Layer

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")

globals().update({_name: _spec.cls for _name, _spec in _REGISTRY.items()})
__all__ = ["Layer", *_REGISTRY]

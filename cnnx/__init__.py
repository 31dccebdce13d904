"""cnnx: a convolutional neural network library written from scratch, NumPy on the CPU, CuPy on the GPU.

The packages, from the bottom up (each imports only those below it): ``cnnx.backends`` (the device
seam), ``cnnx.nn`` (kernels, layers, the model), ``cnnx.optim``, ``cnnx.data`` and ``cnnx.io`` (model
files and checkpoints), ``cnnx.training`` (RunConfig, run_training, the epoch loop), ``cnnx.bench`` and
``cnnx.cli``. The names below are the public API; ``cnnx.layers``, ``cnnx.functional``, ``cnnx.init``
and ``cnnx.losses`` are the short names of ``cnnx.nn``'s modules.
"""

import sys as _sys

from . import nn, optim  # noqa: E402
from .backends import Backend, BackendUnavailable, get_backend  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    CnnxError,
    ConfigError,
    DataError,
    DivergenceError,
    ResourceError,
)
from .io import load_model  # noqa: E402
from .nn import (  # noqa: E402
    PRESETS,
    REGISTRY,
    Sequential,
    build_from_architecture,
    build_model,
    functional,
    init,
    layer,
    layers,
    losses,
    register_layer,
    softmax_cross_entropy,
)
from .nn.layers import *  # noqa: E402, F403  (every registered layer type)
from .optim import SGD, Adam, Momentum, make_optimizer  # noqa: E402
from .training import RunConfig, fit, run_training  # noqa: E402
from .version import __version__  # noqa: E402, F401  (cnnx.__version__)

# ``import cnnx.layers`` (and the others) as well as ``cnnx.layers``: the short names of nn's modules, and of
# the layer files (``cnnx.layers.conv``), so that no second copy of a module is ever imported under them.
for _name in ("functional", "init", "layers", "losses"):
    _sys.modules[f"{__name__}.{_name}"] = getattr(nn, _name)
for _name, _module in list(_sys.modules.items()):
    if _name.startswith("cnnx.nn.layers."):
        _sys.modules["cnnx.layers." + _name.removeprefix("cnnx.nn.layers.")] = _module

__all__ = [
    *nn.layers.__all__,
    "Adam",
    "Backend",
    "BackendUnavailable",
    "CheckpointError",
    "CnnxError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "Momentum",
    "PRESETS",
    "REGISTRY",
    "ResourceError",
    "RunConfig",
    "SGD",
    "Sequential",
    "build_from_architecture",
    "build_model",
    "fit",
    "functional",
    "get_backend",
    "init",
    "layer",
    "layers",
    "load_model",
    "losses",
    "make_optimizer",
    "optim",
    "register_layer",
    "run_training",
    "softmax_cross_entropy",
]

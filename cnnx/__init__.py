"""cnnx: a convolutional neural network library written from scratch, NumPy on the CPU, CuPy on the GPU."""

__version__ = "0.1.0"

from . import functional, init, layers, losses, optim  # noqa: E402
from .backends import Backend, BackendUnavailable, get_backend  # noqa: E402
from .errors import CheckpointError, CnnxError, ConfigError, DataError, DivergenceError  # noqa: E402
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU  # noqa: E402
from .losses import softmax_cross_entropy  # noqa: E402
from .model import PRESETS, Sequential, build_model, load_model  # noqa: E402
from .optim import SGD, Adam, Momentum, make_optimizer  # noqa: E402

__all__ = [
    "Adam",
    "Backend",
    "BackendUnavailable",
    "CheckpointError",
    "CnnxError",
    "ConfigError",
    "Conv2D",
    "DataError",
    "Dense",
    "DivergenceError",
    "Flatten",
    "MaxPool2D",
    "Momentum",
    "PRESETS",
    "ReLU",
    "SGD",
    "Sequential",
    "build_model",
    "functional",
    "get_backend",
    "init",
    "layers",
    "load_model",
    "losses",
    "make_optimizer",
    "optim",
    "softmax_cross_entropy",
]

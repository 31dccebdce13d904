"""What ``cnnx check-layer`` checks: a registered layer type, a config for it and one sample's input shape.

Each built-in layer type has a small example here (:data:`EXAMPLES`), so ``cnnx check-layer Dense``
needs nothing more; the tests build their layers from the same table. A user's layer may give its own
with a classmethod ``example()`` returning ``(config, input_shape)``; otherwise ``--config`` and
``--input-shape`` say what to build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np  # host: inputs are drawn on the host

from cnnx.errors import CheckpointError, ConfigError
from cnnx.nn.model import build_from_architecture
from cnnx.nn.registry import REGISTRY, LayerType, build_layer


def _entry(kind: str, **config) -> dict:
    return {"type": kind, "config": config}


# type -> (config, per-sample input shape): small, so that every check (finite differences of every
# coordinate included) takes a moment, and each takes the layer's main path (a strided, padded
# convolution; overlapping average windows; a residual block with a projection).
EXAMPLES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "Conv2D": ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1}, (2, 7, 6)),
    "Dense": ({"in_features": 5, "out_features": 4}, (5,)),
    "ReLU": ({}, (3, 4, 5)),
    "Flatten": ({}, (3, 4, 5)),
    "Dropout": ({"p": 0.4}, (3, 4, 5)),
    "MaxPool2D": ({"kernel_size": 2}, (3, 7, 6)),
    "AvgPool2D": ({"kernel_size": 3, "stride": 2}, (3, 7, 6)),
    "GlobalAvgPool2D": ({}, (3, 4, 5)),
    "GRU": ({"input_size": 6, "hidden_size": 4}, (2, 5, 3)),
    "BatchNorm1D": ({"num_features": 5}, (5,)),
    "BatchNorm2D": ({"num_features": 3}, (3, 4, 5)),
    "Residual": (
        {
            "body": _entry("Sequential", layers=[
                _entry("Conv2D", in_channels=2, out_channels=2, kernel_size=3, padding="same"),
                _entry("ReLU"),
            ]),
            "shortcut": _entry("Conv2D", in_channels=2, out_channels=2, kernel_size=1),
        },
        (2, 5, 5),
    ),
    "Sequential": (
        {
            "layers": [
                _entry("Conv2D", in_channels=2, out_channels=3, kernel_size=3, padding="same"),
                _entry("ReLU"),
                _entry("MaxPool2D", kernel_size=2),
                _entry("Dropout", p=0.3),
                _entry("Flatten"),
                _entry("Dense", in_features=27, out_features=4),
            ]
        },
        (2, 6, 6),
    ),
}  # fmt: skip
BATCH = 3  # samples per checked batch: more than one, so batch statistics and per-sample paths differ


@dataclass(frozen=True)
class Subject:
    """A layer to check: its registered type, a complete description and one sample's input shape."""

    spec: LayerType
    config: dict
    input_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def description(self) -> dict:
        return {"type": self.spec.name, "config": self.config}

    def build(self, backend="cpu", dtype="float64", seed: int = 0):
        """A fresh layer: initial weights drawn from ``seed``, its random streams seeded from it too."""
        layer = build_layer(self.description(), backend=backend, dtype=dtype, rng=seed)
        layer.seed_streams(seed)
        return layer

    def inputs(self, seed: int = 0) -> np.ndarray:  # host
        """A float64 batch of :data:`BATCH` samples, standard normal."""
        return np.random.default_rng(seed).standard_normal((BATCH, *self.input_shape))  # host


def layer_type(target) -> LayerType:
    """The registered type ``target`` names: a type name (``Dense``), ``module:Class`` or
    ``path/to/file.py:Class``, or a layer class. ConfigError in one line for anything else."""
    from cnnx.plugins import load_target

    if isinstance(target, str) and ":" not in target:
        if target not in REGISTRY:
            raise ConfigError(f"unknown layer type {target!r} (known: {', '.join(REGISTRY)}; a layer of "
                              "your own: MODULE:CLASS, FILE.py:CLASS or --import)")  # fmt: skip
        return REGISTRY[target]
    cls = load_target(target) if isinstance(target, str) else target
    kind = getattr(cls, "layer_type", None)
    if not isinstance(cls, type) or not isinstance(kind, str):
        raise ConfigError(f"{target} is not a layer class")
    spec = REGISTRY.get(kind)
    if spec is None or spec.cls is not cls:
        raise ConfigError(f"{target} is not a registered layer: declare it with @register_layer(...)")
    return spec


def subject(target, config=None, input_shape=None) -> Subject:
    """What to check for ``target`` (see :func:`layer_type`): ``config`` (a dict, or its JSON text) and
    ``input_shape`` (a tuple, or ``"3,8,8"``) where given, else the layer's example; the layer is
    checked to build and to take that input. ConfigError in one line for what does not fit."""
    spec = layer_type(target)
    if config is None and not spec.required and _example(spec) is None:
        config = {}  # nothing to choose: every argument has its default
    if config is None or input_shape is None:
        example = _example(spec)
        if example is None:
            wanted = "--input-shape SHAPE" if config is not None else "--config JSON and --input-shape SHAPE"
            raise ConfigError(f"{spec.name} has no example(): give {wanted}")
        config = example[0] if config is None else config
        input_shape = example[1] if input_shape is None else input_shape
    config, input_shape = _config(config, spec.name), _shape(input_shape)
    try:
        build_from_architecture([{"type": spec.name, "config": config}], input_shape=input_shape)
    except CheckpointError as exc:
        raise ConfigError(f"{spec.name} with config {json.dumps(config)}: {exc}") from None
    return Subject(spec, config, input_shape)


def _example(spec: LayerType):
    own = getattr(spec.cls, "example", None)
    if callable(own):
        example = own()
        if not (isinstance(example, tuple) and len(example) == 2):
            raise ConfigError(f"{spec.name}.example() must return (config, input_shape)")
        return example
    return EXAMPLES.get(spec.name) if spec.cls.__module__.startswith("cnnx.") else None


def _config(config, name: str) -> dict:
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config for {name} is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"the config of {name} must be a JSON object of its arguments, not {config!r}")
    return config


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, str):
        parts = [part.strip() for part in shape.split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            raise ConfigError(f"--input-shape must be sizes separated by commas (3,8,8), not {shape!r}")
        shape = [int(part) for part in parts]
    shape = tuple(shape)
    if not shape or not all(isinstance(size, int) and size >= 1 for size in shape):
        raise ConfigError(f"an input shape is one or more positive sizes, not {shape!r}")
    return shape

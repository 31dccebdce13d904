"""The architecture presets, as layer descriptions, and :func:`build_model`, which builds a preset or
any description list with weights and random streams drawn from one seed."""

from __future__ import annotations

import copy
import math

from cnnx.checks import is_whole_number, short_repr
from cnnx.errors import CheckpointError, ConfigError

from .model import IMAGE_SHAPE, Sequential, build_from_architecture
from .registry import output_shape


def layer(kind: str, **config) -> dict:
    """A layer description: ``layer("Dense", in_features=784, out_features=10)``."""
    return {"type": kind, "config": config}


def _dense_head(features: int) -> list[dict]:
    """The original report's classifier, dense 128-64-32-10 with ReLUs, on ``features`` inputs."""
    sizes = (features, 128, 64, 32, 10)
    head = []
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        head += [layer("Dense", in_features=n_in, out_features=n_out), layer("ReLU")]
    return head[:-1]  # no ReLU on the logits


def _conv_block(n_in: int, n_out: int) -> list[dict]:
    """The report's conv block: a 3x3 convolution, ReLU, 2x2 max pooling."""
    conv = layer("Conv2D", in_channels=n_in, out_channels=n_out, kernel_size=3)
    return [conv, layer("ReLU"), layer("MaxPool2D", kernel_size=2)]


def _conv_bn_relu(n_in: int, n_out: int) -> list[dict]:
    """A 3x3 'same' convolution (no bias: the batch norm would cancel it), batch norm, ReLU: the unit of
    a VGG-style stack."""
    conv = layer("Conv2D", in_channels=n_in, out_channels=n_out, kernel_size=3, padding="same", bias=False)
    return [conv, layer("BatchNorm2D", num_features=n_out), layer("ReLU")]


def _bn_block(n_in: int, n_out: int) -> list[dict]:
    """:func:`_conv_bn_relu`, then 2x2 max pooling: halves the image, loses no border."""
    return [*_conv_bn_relu(n_in, n_out), layer("MaxPool2D", kernel_size=2)]


def _residual_block(n_in: int, n_out: int, stride: int) -> list[dict]:
    """Two 3x3 convolutions with batch norm, added to the input (or to its 1x1 projection where the
    size or the channels change), then a ReLU (He et al., 2016)."""

    def conv(a, b, k, s, pad):
        return layer(
            "Conv2D", in_channels=a, out_channels=b, kernel_size=k, stride=s, padding=pad, bias=False
        )

    body = [conv(n_in, n_out, 3, stride, 1), layer("BatchNorm2D", num_features=n_out), layer("ReLU"),
            conv(n_out, n_out, 3, 1, "same"), layer("BatchNorm2D", num_features=n_out)]  # fmt: skip
    shortcut = None
    if stride != 1 or n_in != n_out:
        projection = [conv(n_in, n_out, 1, stride, 0), layer("BatchNorm2D", num_features=n_out)]
        shortcut = layer("Sequential", layers=projection)
    return [layer("Residual", body=layer("Sequential", layers=body), shortcut=shortcut), layer("ReLU")]


SEED = [*_conv_block(1, 32), *_conv_block(32, 64), layer("Flatten"), *_dense_head(64 * 5 * 5)]
MLP = [layer("Flatten"), *_dense_head(28 * 28)]
_head = _dense_head(64 * 5 * 5)
SEED_DROPOUT = [*_conv_block(1, 32), *_conv_block(32, 64), layer("Flatten"), layer("Dropout", p=0.25),
                *_head[:2], layer("Dropout", p=0.25), *_head[2:]]  # fmt: skip
CNN_BN = [*_bn_block(1, 32), *_bn_block(32, 64), layer("Flatten"), layer("Dropout", p=0.3),
          layer("Dense", in_features=64 * 7 * 7, out_features=128, bias=False),
          layer("BatchNorm1D", num_features=128),
          layer("ReLU"), layer("Dropout", p=0.3),
          layer("Dense", in_features=128, out_features=10)]  # fmt: skip

VGG_BN = [*_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), layer("MaxPool2D", kernel_size=2),
          *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), layer("MaxPool2D", kernel_size=2),
          layer("Flatten"), layer("Dropout", p=0.25),
          layer("Dense", in_features=64 * 7 * 7, out_features=256, bias=False),
          layer("BatchNorm1D", num_features=256), layer("ReLU"), layer("Dropout", p=0.25),
          layer("Dense", in_features=256, out_features=10)]  # fmt: skip

RESNET = [layer("Conv2D", in_channels=1, out_channels=16, kernel_size=3, padding="same", bias=False),
          layer("BatchNorm2D", num_features=16), layer("ReLU"), *_residual_block(16, 16, 1),
          *_residual_block(16, 32, 2), *_residual_block(32, 64, 2), layer("GlobalAvgPool2D"),
          layer("Dense", in_features=64, out_features=10)]  # fmt: skip

GRU_NET = [layer("GRU", input_size=28, hidden_size=128), layer("Dense", in_features=128, out_features=10)]

PRESETS = {
    "seed": (SEED, "the original report's CNN: two 3x3 conv blocks (32, 64) and dense 128-64-32-10"),
    "mlp": (MLP, "the original report's dense-only network 784-128-64-32-10"),
    "seed-dropout": (SEED_DROPOUT, "the seed CNN with dropout 0.25 before the first two dense layers"),
    "cnn-bn": (
        CNN_BN,
        "two 'same' 3x3 conv blocks (32, 64) with batch norm, dropout 0.3, dense 128 with batch norm, 10",
    ),  # fmt: skip
    "vgg-bn": (
        VGG_BN,
        "a VGG-style stack: four 'same' 3x3 conv-batch-norm-ReLU layers (32, 32, pool, 64, 64, pool), "
        "dropout 0.25, dense 256 with batch norm, dropout 0.25, 10",
    ),  # fmt: skip
    "resnet": (
        RESNET,
        "a small residual network: a 16-channel stem, three residual blocks (16, 32 and 64 "
        "channels, the last two at stride 2), global average pooling, dense 10",
    ),  # fmt: skip
    "gru": (GRU_NET, "a GRU reading each image as 28 rows of 28 pixels (hidden 128), then dense 10"),
}


def preset_architecture(name: str, input_shape=IMAGE_SHAPE, classes: int = 10) -> list[dict]:
    """The description of preset ``name`` for other inputs or another number of classes: the first dense
    layer takes what the layers before it give for ``input_shape``, the last one gives ``classes``
    outputs. For Fashion-MNIST's (1, 28, 28) and 10 classes it is the preset itself."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown model {short_repr(name)}: choose one of {', '.join(PRESETS)}")
    architecture = copy.deepcopy(PRESETS[name][0])
    for entry in architecture:
        if entry["type"] == "GRU":  # it reads images row by row: channels times width numbers a step
            shape = tuple(input_shape)
            entry["config"]["input_size"] = shape[0] * shape[2] if len(shape) == 3 else shape[-1]
    dense = [i for i, entry in enumerate(architecture) if entry["type"] == "Dense"]
    # What the convolutions (or the Flatten) before the head give per sample, from the descriptions.
    front = layer("Sequential", layers=architecture[: dense[0]])
    try:
        features = math.prod(output_shape(front, input_shape) if dense[0] > 0 else input_shape)
    except (ValueError, ConfigError) as exc:
        shape = "x".join(map(str, input_shape))
        raise CheckpointError(f"the architecture does not fit together on inputs of {shape}: {exc}") from None
    architecture[dense[0]]["config"]["in_features"] = features
    architecture[dense[-1]]["config"]["out_features"] = int(classes)
    return architecture


def _dropout_layers(entry) -> list[dict]:
    """The Dropout descriptions in a description (a list, a layer, its config), nested ones included."""
    if isinstance(entry, list):
        return [found for item in entry for found in _dropout_layers(item)]
    if not isinstance(entry, dict):
        return []
    own = [entry] if entry.get("type") == "Dropout" else []
    return own + [found for value in entry.values() for found in _dropout_layers(value)]


def with_dropout(model, p: float) -> list[dict]:
    """The description of ``model`` (a preset name or a description list) with every Dropout layer's
    rate set to ``p``, nested ones included. A model without a Dropout layer is a ConfigError."""
    architecture = copy.deepcopy(PRESETS[model][0] if isinstance(model, str) and model in PRESETS else model)
    if not isinstance(architecture, list):
        raise ConfigError(f"unknown model {short_repr(model)}: choose one of {', '.join(PRESETS)}")
    dropouts = _dropout_layers(architecture)
    if not dropouts:
        with_it = [name for name, (layers, _) in PRESETS.items() if _dropout_layers(layers)]
        raise ConfigError(
            f"dropout: model {short_repr(model) if not isinstance(model, list) else 'custom'} has no "
            f"Dropout layer to set (presets with dropout: {', '.join(with_it)})"
        )
    for entry in dropouts:
        entry.setdefault("config", {})["p"] = p
    return architecture


def build_model(
    model="seed", *, backend=None, dtype="float32", seed=0, input_shape=IMAGE_SHAPE, name: str | None = None
) -> Sequential:
    """Build a preset by name, or a model from a list of layer descriptions (checked first, as a file's
    would be), with initial weights and random streams drawn from ``seed``: the same seed gives the
    same model on every backend."""
    if isinstance(model, str) and model in PRESETS:
        architecture, name = preset_architecture(model, input_shape), name or model
    elif isinstance(model, list):
        architecture, name = model, name or "custom"
    else:  # a name from a file may be any JSON value
        raise ConfigError(f"unknown model {short_repr(model)}: choose one of {', '.join(PRESETS)}")
    if not is_whole_number(seed) or seed < 0:  # NumPy's seeding refuses these with a TypeError or ValueError
        raise ConfigError(f"the seed must be a whole number >= 0, got {short_repr(seed)}")
    built = build_from_architecture(
        architecture, backend=backend, dtype=dtype, input_shape=input_shape, name=name, rng=seed
    )
    built.seed_streams(seed)
    return built

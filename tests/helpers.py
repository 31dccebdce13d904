"""Test helpers: data, stops, and the finite differences and relative errors of cnnx.layercheck."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import cnnx
from cnnx.backends import BackendUnavailable, get_backend
from cnnx.layercheck.gradients import numerical_gradient, rel_error  # noqa: F401  (re-exported)
from cnnx.nn.presets import PRESETS


def backend_or_skip(name):
    """The named backend, or skip the test with the one-line reason it is unusable here."""
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def assert_close(actual, expected, rtol, what="arrays"):
    err = rel_error(actual, expected)
    assert err < rtol, f"{what} differ: relative error {err:.3e} >= {rtol:.0e}"


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 28, 28) of noise with a bright 7x7 square whose place depends on the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 3 + 12 * row : 10 + 12 * row, 1 + 5 * col : 8 + 5 * col] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_blob_idx(directory, train: int = 160, test: int = 40):
    """Write blob images under the four official IDX file names in ``directory``; returns it."""
    from cnnx.data import IDX_FILES, write_idx

    for split, n, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = blobs(n, seed)
        image_name, label_name = IDX_FILES[split]
        write_idx(directory / image_name, images)
        write_idx(directory / label_name, labels)
    return directory


class StopAtStep:
    """A stop flag that asks to stop when polled for the ``step``-th time (fit polls once per step)."""

    def __init__(self, step: int):
        self.step, self.polls = step, 0

    @property
    def requested(self):
        self.polls += 1
        return "test" if self.polls >= self.step else None


# An experiment file of the smallest study the grid tests run: one mlp, a run under each protocol.
TINY_STUDY = """
title = "Tiny {name}"
compare = ["optimizers"]

[config]
model = "mlp"
optimizer = "adam"
batch_size = 32
data_dir = "{data}"

[[runs.report]]
max_steps = 12

[[runs.modern]]
epochs = 2
"""


# A user's leaky ReLU as the source of their own file (tests/test_plugins.py, tests/test_check_layer.py):
# ``negative`` is its backward on the negative side (``self.slope * dy`` is right; a test plants a bug
# there), ``example`` optional class-body text.
_LEAKY_RELU = '''
from cnnx.nn.layers.base import Layer
from cnnx.nn.registry import Number, register_layer


@register_layer(fields={{"slope": Number(0, 1)}})
class {name}(Layer):
    """max(x, slope x)."""

    def __init__(self, slope=0.1, *, backend=None, dtype="float32"):
        super().__init__(backend=backend, dtype=dtype)
        self.slope = float(slope)

    def forward(self, x, train=True, draws=None):
        positive = x > 0
        return self.xp.where(positive, x, self.slope * x), (positive if train else None)

    def backward(self, positive, dy, need_dx=True):
        return self.xp.where(positive, dy, {negative}), {{}}

    def config(self):
        return {{"slope": self.slope}}
{example}'''


def leaky_relu_source(name: str = "LeakyReLU", negative: str = "self.slope * dy", example: str = "") -> str:
    return _LEAKY_RELU.format(name=name, negative=negative, example=example)


# The models the ONNX and PyTorch interop tests carry across: every preset and a nested residual model.
INTEROP_CASES = [*sorted(PRESETS), "nested-residual"]


def nested_residual(dtype: str = "float32"):
    """A Residual whose body holds another Residual, with a projection shortcut, on images."""
    from cnnx import layer

    inner = layer(
        "Residual",
        body=layer(
            "Sequential",
            layers=[
                layer("Conv2D", in_channels=8, out_channels=8, kernel_size=3, padding="same"),
                layer("ReLU"),
            ],
        ),
        shortcut=None,
    )
    outer = layer("Residual", body=layer("Sequential", layers=[
        layer("Conv2D", in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1),
        layer("BatchNorm2D", num_features=8), inner]),
        shortcut=layer("Conv2D", in_channels=4, out_channels=8, kernel_size=1, stride=2))  # fmt: skip
    stem = layer("Conv2D", in_channels=1, out_channels=4, kernel_size=3, padding="same")
    head = [
        layer("AvgPool2D", kernel_size=2),
        layer("Flatten"),
        layer("Dense", in_features=392, out_features=10),
    ]
    return cnnx.build_model([stem, layer("ReLU"), outer, *head], seed=1, name="nested", dtype=dtype)


def interop_model(case: str, dtype: str = "float32"):
    """A preset (seed 0) or the nested residual model, with running statistics away from 0 and 1."""
    model = (
        nested_residual(dtype) if case == "nested-residual" else cnnx.build_model(case, seed=0, dtype=dtype)
    )
    rng = np.random.default_rng(3)  # running statistics away from 0 and 1: evaluation is not the identity
    for _, layer in model.named_layers():
        if "running_var" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.normal(0, 0.3, layer.buffers["running_mean"].shape)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, layer.buffers["running_var"].shape)
    return model


def png_claiming(width, height) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def train_blob_run(root, model: str = "seed", epochs: int = 1, train: int = 160, test: int = 40):
    """A run of ``model`` trained by ``cnnx train`` on blob IDX files written under ``root``/data (batch
    32); returns (the run directory, the data folder)."""
    from click.testing import CliRunner

    from cnnx.cli import cli

    (root / "data").mkdir()
    data = write_blob_idx(root / "data", train=train, test=test)
    run = root / "run"
    done = CliRunner().invoke(cli, ["train", "--model", model, "--epochs", str(epochs), "--batch-size", "32",
                                    "--data-dir", str(data), "--out", str(run), "--quiet"])  # fmt: skip
    assert done.exit_code == 0, done.output
    return run, data

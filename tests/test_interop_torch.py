"""PyTorch weights both ways (cnnx.interop.to_torch, from_torch): every preset and a nested residual
model give PyTorch's evaluation logits in float64 and float32, the round trip gives identical logits
and weights, a module built in PyTorch reads into cnnx, and what has no counterpart is one line."""

from __future__ import annotations

import numpy as np
import pytest

import cnnx
from cnnx.errors import ConfigError
from cnnx.interop import from_torch, to_torch
from cnnx.nn.presets import PRESETS

from helpers import INTEROP_CASES as CASES
from helpers import interop_model as _model

torch = pytest.importorskip("torch")

# float64: the same arithmetic up to the order of sums (PyTorch's convolution and GEMM block in their
# own order): measured 3.4e-15 of the largest logit at worst. float32: the same, at float32 rounding,
# measured 9.4e-7.
BOUNDS = {"float64": 1e-12, "float32": 1e-5}


def _logits(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_pytorch_gives_the_models_logits(case, dtype):
    model = _model(case, dtype)
    before = model.state_dict()
    module = to_torch(model)
    assert not module.training
    x = np.random.default_rng(4).random((32, *model.input_shape)).astype(dtype)
    ours, theirs = model(x), _logits(module, x)
    assert theirs.dtype == np.dtype(dtype)
    assert np.abs(theirs - ours).max() / np.abs(ours).max() < BOUNDS[dtype]
    after = model.state_dict()  # nothing of the model moved or changed
    assert all(np.array_equal(before[k], after[k]) for k in before if not isinstance(before[k], dict))


@pytest.mark.parametrize("case", CASES)
def test_the_round_trip_gives_identical_logits_and_weights(case):
    model = _model(case, "float64")
    back = from_torch(to_torch(model), input_shape=model.input_shape, dtype="float64")
    x = np.random.default_rng(5).random((16, *model.input_shape))
    assert np.array_equal(back(x), model(x))
    ours, theirs = model.state_dict(), back.state_dict()
    arrays = sorted(k for k in ours if not isinstance(ours[k], dict))
    assert arrays == sorted(k for k in theirs if not isinstance(theirs[k], dict))
    assert all(np.array_equal(ours[k], theirs[k]) for k in arrays)


def test_a_module_built_in_pytorch_reads_into_cnnx():
    torch.manual_seed(0)
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Dropout(0.2), nn.Linear(8, 10))  # fmt: skip
    module[1].running_mean.uniform_(-0.3, 0.3)
    module[1].running_var.uniform_(0.5, 2.0)
    module.eval()
    model = from_torch(module, dtype="float32")
    kinds = [
        "Conv2D",
        "BatchNorm2D",
        "ReLU",
        "MaxPool2D",
        "Conv2D",
        "ReLU",
        "GlobalAvgPool2D",
        "Dropout",
        "Dense",
    ]
    assert [layer.layer_type for layer in model.layers] == kinds
    x = np.random.default_rng(6).random((8, 1, 28, 28), dtype=np.float32)
    ours, theirs = model(x), _logits(module, x)
    assert np.abs(theirs - ours).max() / np.abs(ours).max() < BOUNDS["float32"]


def test_a_module_without_a_counterpart_is_one_line():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.Tanh())
    with pytest.raises(
        ConfigError, match=r"^from_torch: no cnnx layer for torch.nn.modules.activation.Tanh \(at 2\)$"
    ):
        from_torch(module)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ConfigError, match="Conv2d at 0: a grouped, dilated or non-zero-padded convolution"):
        from_torch(grouped, input_shape=(2, 8, 8))


def test_a_user_layer_without_a_counterpart_is_one_line(user_layer_module):
    user_layer_module("LeakyTorch")
    model = cnnx.build_model([cnnx.layer("Flatten"), cnnx.layer("LeakyTorch")])
    with pytest.raises(ConfigError, match=r"^no PyTorch counterpart for a LeakyTorch layer \(there are for"):
        to_torch(model)


def test_every_registered_built_in_type_has_a_counterpart():
    from cnnx.interop.pytorch import MIRRORS
    from cnnx.nn.registry import REGISTRY

    built_in = {name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx.")}
    assert built_in <= set(MIRRORS), sorted(built_in - set(MIRRORS))
    assert set(PRESETS) <= set(CASES)

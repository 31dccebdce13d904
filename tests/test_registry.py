"""The registry as the one place a layer's arguments are judged: every constructor refuses what its fields
refuse with one error type and one wording, takes what Python offers beyond JSON, agrees with the check of
a JSON architecture, makes its parameters in the shapes it declares, and is exported by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnx.nn.layers as layers_package
from cnnx.errors import CheckpointError, ConfigError
from cnnx.layers import (
    GRU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    MaxPool2D,
    ReLU,
    Residual,
)
from cnnx.nn import PRESETS, Sequential, build_model
from cnnx.nn.layers import Layer
from cnnx.nn.presets import preset_architecture
from cnnx.nn.registry import REGISTRY, check_architecture, output_shape, register_layer, unregister_layer

# Arguments that build each layer type of cnnx, a few ways each (bias on and off, a kernel pair, ...).
EXAMPLES = {
    "Dense": [dict(in_features=5, out_features=3), dict(in_features=4, out_features=2, bias=False)],
    "Conv2D": [
        dict(in_channels=2, out_channels=3, kernel_size=3),
        dict(in_channels=1, out_channels=4, kernel_size=[3, 5], stride=2, padding=1, bias=False),
        dict(in_channels=3, out_channels=2, kernel_size=3, padding="same", init="he"),
    ],
    "ReLU": [{}],
    "Flatten": [{}],
    "Dropout": [dict(p=0.25)],
    "BatchNorm1D": [dict(num_features=6)],
    "BatchNorm2D": [dict(num_features=3, momentum=0.2, eps=1e-3)],
    "MaxPool2D": [dict(kernel_size=2), dict(kernel_size=3, stride=1)],
    "AvgPool2D": [dict(kernel_size=2, stride=None)],
    "GlobalAvgPool2D": [{}],
    "GRU": [dict(input_size=4, hidden_size=3)],
    "Residual": [
        dict(body=lambda: Dense(3, 3)),
        dict(body=lambda: Sequential([Dense(3, 3), ReLU()]), shortcut=lambda: Dense(3, 3, bias=False)),
    ],
    "Sequential": [dict(layers=lambda: [Dense(3, 4), ReLU(), Dense(4, 2)])],
}
OURS = sorted(name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx."))
CASES = [(kind, i) for kind in OURS for i in range(len(EXAMPLES.get(kind, [])))]


def arguments(kind: str, i: int) -> dict:
    """Example ``i`` of ``kind`` as constructor arguments (sublayers built fresh)."""
    return {key: value() if callable(value) else value for key, value in EXAMPLES[kind][i].items()}


def test_every_layer_type_of_cnnx_has_examples_here():
    assert set(OURS) == set(EXAMPLES), f"registered {OURS}, examples for {sorted(EXAMPLES)}"


@pytest.mark.parametrize(
    ("kind", "key"), [(kind, key) for kind in OURS for key in REGISTRY[kind].fields], ids=lambda v: v
)
def test_every_constructor_refuses_what_a_field_refuses_with_one_config_error_naming_layer_and_argument(
    kind, key
):
    spec = REGISTRY[kind]
    assert not spec.fields[key].accepts("nonsense"), f"{kind}.{key} takes the word 'nonsense'"
    with pytest.raises(ConfigError) as info:
        spec.cls(**{**arguments(kind, 0), key: "nonsense"})
    message = str(info.value)
    assert message.startswith(f"{kind} {key} must be "), f"the message does not name {kind} {key}: {message}"
    assert message.endswith("got 'nonsense'") and "\n" not in message, (
        f"not one line ending in the value: {message}"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Dense(4, 2, bias=1), "Dense bias must be True or False, got 1"),
        (lambda: Dense(2, 2, init="uniform"), "Dense init must be one of xavier, he, got 'uniform'"),
        (lambda: Dropout(1.0), "Dropout p must be a number in [0, 1), got 1.0"),
        (lambda: BatchNorm2D(4, eps=0), "BatchNorm2D eps must be a number in (0, 1), got 0"),
        (lambda: Residual(Dense(2, 2), shortcut=3), "Residual shortcut must be a layer or None, got 3"),
        (lambda: Sequential([]), "Sequential layers must be a non-empty list of layers, got []"),
        (
            lambda: Conv2D(1, 1, 2, padding="same"),
            "Conv2D padding 'same' needs stride 1 and odd kernel sizes, got stride 1 and kernel 2x2",
        ),
    ],
    ids=["dense-bias", "dense-init", "dropout-p", "batchnorm-eps", "residual-shortcut", "sequential-empty",
         "conv-same-even"],
)  # fmt: skip
def test_a_refused_argument_reads_as_the_layer_the_argument_and_what_it_must_be(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "make",
    [
        lambda: Dense(np.int64(5), np.int32(3)),
        lambda: Conv2D(np.int64(1), 2, (3, np.int16(3)), stride=np.uint8(1), padding=np.int64(1)),
        lambda: BatchNorm1D(np.int64(4), momentum=np.float32(0.5), eps=np.float64(1e-4)),
        lambda: GRU(np.int64(4), np.int64(3)),
        lambda: MaxPool2D(np.int64(2), stride=np.int64(2)),
        lambda: AvgPool2D(np.int64(2)),
        lambda: Dropout(np.float64(0.5)),
        lambda: Sequential((Dense(3, 3), ReLU())),
    ],
    ids=["dense", "conv", "batchnorm", "gru", "maxpool", "avgpool", "dropout", "sequential-tuple"],
)
def test_constructors_take_numpy_numbers_and_tuples_and_save_plain_json(make):
    layer = make()
    config = json.loads(json.dumps(layer.describe()))["config"]
    assert check_architecture([layer.describe()]) == layer.parameter_count()
    assert config == layer.config(), f"the config does not survive JSON: {layer.config()}"


@pytest.mark.parametrize(
    ("config", "shown"),
    [
        ({"in_channels": 1, "out_channels": 2, "stride": 2, "padding": "same"}, "stride 2 and kernel 3x3"),
        (
            {"in_channels": 1, "out_channels": 2, "kernel_size": [3, 4], "padding": "same"},
            "stride 1 and kernel 3x4",
        ),
    ],
    ids=["stride", "even-kernel"],
)
def test_the_architecture_check_refuses_what_the_constructor_refuses_before_anything_is_built(config, shown):
    with pytest.raises(CheckpointError) as info:
        check_architecture([{"type": "Conv2D", "config": config}])
    expected = f"layer 0 (Conv2D): padding 'same' needs stride 1 and odd kernel sizes, got {shown}"
    assert str(info.value) == expected


def test_the_architecture_check_refuses_a_batch_norm_eps_of_zero():
    with pytest.raises(CheckpointError, match=r"layer 0 \(BatchNorm1D\): eps must be a number in \(0, 1\)"):
        check_architecture([{"type": "BatchNorm1D", "config": {"num_features": 4, "eps": 0}}])


@pytest.mark.parametrize(("kind", "i"), CASES, ids=lambda v: str(v))
def test_param_shapes_are_the_built_layers_parameters_in_order(kind, i):
    layer = REGISTRY[kind].cls(**arguments(kind, i))
    built = [(name, tuple(p.shape)) for name, p in layer.params.items()]
    declared = list(layer.param_shapes().items())
    assert declared == built, f"{kind} declares {declared}, builds {built}"


@pytest.mark.parametrize(("kind", "i"), CASES, ids=lambda v: str(v))
def test_the_architecture_check_counts_the_parameters_a_layer_builds(kind, i):
    layer = REGISTRY[kind].cls(**arguments(kind, i))
    description = json.loads(json.dumps(layer.describe()))
    assert check_architecture([description]) == layer.parameter_count()


def test_the_layers_package_exports_exactly_its_registered_types():
    registered = {
        name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith(layers_package.__name__)
    }
    exported = set(layers_package.__all__) - {"Layer"}
    assert exported == registered, f"exported {sorted(exported)}, registered {sorted(registered)}"
    for name in exported:
        assert getattr(layers_package, name) is REGISTRY[name].cls, (
            f"cnnx.nn.layers.{name} is not the registered class"
        )


# -- shapes from descriptions ---------------------------------------------------------------------

# A per-sample input that each example above fits.
INPUTS = {
    ("Dense", 0): (5,), ("Dense", 1): (4,), ("Conv2D", 0): (2, 8, 8), ("Conv2D", 1): (1, 9, 11),
    ("Conv2D", 2): (3, 6, 5), ("ReLU", 0): (2, 3, 3), ("Flatten", 0): (2, 3, 4), ("Dropout", 0): (7,),
    ("BatchNorm1D", 0): (6,), ("BatchNorm2D", 0): (3, 4, 4), ("MaxPool2D", 0): (3, 8, 8),
    ("MaxPool2D", 1): (2, 7, 5), ("AvgPool2D", 0): (2, 6, 7), ("GlobalAvgPool2D", 0): (3, 5, 5),
    ("GRU", 0): (1, 5, 4), ("Residual", 0): (3,), ("Residual", 1): (3,), ("Sequential", 0): (3,),
}  # fmt: skip


def test_every_example_has_an_input():
    assert set(INPUTS) == set(CASES), f"no input for {sorted(set(CASES) - set(INPUTS))}"


@pytest.mark.parametrize(("kind", "i"), CASES, ids=lambda v: str(v))
def test_a_description_gives_the_output_shape_of_the_layer_it_builds(kind, i):
    layer = REGISTRY[kind].cls(**arguments(kind, i))
    shape = INPUTS[kind, i]
    built = tuple(layer(np.zeros((2, *shape), layer.dtype)).shape[1:])
    inferred = output_shape(json.loads(json.dumps(layer.describe())), shape)
    assert inferred == layer.output_shape(shape) == built, (
        f"inferred {inferred}, method {layer.output_shape(shape)}, ran {built}"
    )


def test_a_residual_description_whose_branches_disagree_is_refused_as_the_layer_is():
    block = Residual(Dense(3, 3), shortcut=Dense(3, 2))
    with pytest.raises(ConfigError) as built:
        block.output_shape((3,))
    with pytest.raises(ConfigError) as described:
        output_shape(block.describe(), (3,))
    assert str(described.value) == str(built.value)


def test_presets_adapt_to_other_inputs_without_building_a_layer(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built to read a shape")

    monkeypatch.setattr(Layer, "__init__", refuse)
    for name in PRESETS:
        architecture = preset_architecture(name, (1, 20, 20), 4)
        assert architecture[-1]["config"]["out_features"] == 4, f"{name}: not 4 classes"


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_for_other_inputs_builds_what_its_description_says(name):
    architecture = preset_architecture(name, (1, 20, 20), 4)
    model = build_model(architecture, input_shape=(1, 20, 20))
    assert model.output_shapes()[-1] == (4,) and check_architecture(architecture) == model.parameter_count()


def test_a_layer_type_inheriting_a_registered_constructor_checks_it_once_under_its_own_name():
    @register_layer(fields=dict(REGISTRY["Dense"].fields), param_shapes=REGISTRY["Dense"].param_shapes)
    class WideDense(Dense):
        pass

    try:
        with pytest.raises(ConfigError, match=r"^WideDense in_features must be"):
            WideDense(0, 2)
        assert WideDense.__init__.unchecked is Dense.__init__.unchecked, "the check wraps another check"
    finally:
        unregister_layer("WideDense")

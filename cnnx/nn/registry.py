"""The layer registry: every layer type is declared once, beside its class, with its config fields.

``@register_layer(fields=..., parameters=...)`` on a :class:`~cnnx.nn.layers.base.Layer` subclass records
what each constructor argument may be (a :class:`Field`: its type and caps) and how many parameters a
config gives. Everything that needs to know the layer types reads this one table:

- :func:`check_architecture` checks an untrusted JSON architecture (a model file's, a TOML file's)
  before anything is built: known types, allowed and required keys, value types, size caps, nesting;
- :func:`build_layer` builds a layer (and its sublayers) from a checked description;
- the public exports of :mod:`cnnx.nn.layers` and the model summary.

An architecture is a list of layer descriptions ``{"type": name, "config": {...}}``; a container's
config holds its sublayers as descriptions too (a :class:`SubLayer` or :class:`SubLayers` field), so the
description nests as the model does.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

from cnnx.checks import is_whole_number, short_repr
from cnnx.errors import CheckpointError, ConfigError

from .init import SCHEMES

# Caps that keep a small hostile description from making cnnx allocate gigabytes; each is far above
# any model cnnx builds (the seed CNN: 234,410 parameters, 21,632 values after its widest layer).
# They count values, not bytes: one description serves float32 and float64 models, and a file may be
# loaded in either. Bytes follow at 4 or 8 a value: one image's widest layer takes at most 80 MB.
# Inference sizes its batches from these bytes (cnnx.nn.model.INFERENCE_BYTES), so a model at the caps
# runs in bounded memory at any requested batch size.
MAX_PARAMETERS = 10**8  # per layer and in total
MAX_ACTIVATION = 10**7  # values per image after any layer, and in any layer's scratch (see register_layer)
MAX_SIZE = 1 << 24  # any single size: channels, features, kernel, stride, padding
MAX_LAYERS = 256  # layer descriptions in one architecture, nested ones included
MAX_DEPTH = 8  # containers inside containers
# Constructor arguments that are not config: where the layer lives and where its initial weights come from.
NOT_CONFIG = ("backend", "dtype", "rng")


# -- fields: what a config value may be ------------------------------------------------------------


class Field:
    """One config field: ``what`` it must be (for error messages) and a check of a JSON value."""

    what = "a value"

    def ok(self, value) -> bool:
        raise NotImplementedError


class Size(Field):
    """A whole number in ``minimum``..``maximum``: channels, features, kernel sizes, strides."""

    def __init__(self, minimum: int = 1, maximum: int = MAX_SIZE):
        self.minimum, self.maximum = minimum, maximum
        self.what = f"a whole number in {minimum}..{maximum:,}"

    def ok(self, value) -> bool:
        return is_whole_number(value) and self.minimum <= value <= self.maximum


class SizePair(Size):
    """A size, or a pair of them ``[height, width]``."""

    def __init__(self, minimum: int = 1, maximum: int = MAX_SIZE):
        super().__init__(minimum, maximum)
        self.what = f"a whole number in {minimum}..{maximum:,} or a pair of them"

    def ok(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return len(value) == 2 and all(super(SizePair, self).ok(v) for v in value)
        return super().ok(value)


class Optional(Field):
    """null, or what ``field`` allows."""

    def __init__(self, field: Field):
        self.field = field
        self.what = f"null or {field.what}"

    def ok(self, value) -> bool:
        return value is None or self.field.ok(value)


class OneOf(Field):
    """What any of ``fields`` allows (a size or the word "same", say)."""

    def __init__(self, *fields: Field):
        self.fields = fields
        self.what = " or ".join(field.what for field in fields)

    def ok(self, value) -> bool:
        return any(field.ok(value) for field in self.fields)


class Choice(Field):
    """One of a few strings."""

    def __init__(self, *options: str):
        self.options = options
        self.what = "one of " + ", ".join(options)

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.options


class Number(Field):
    """A finite real number in [low, high] (or [low, high) with ``high_open``)."""

    def __init__(self, low: float, high: float, *, high_open: bool = False):
        self.low, self.high, self.high_open = low, high, high_open
        self.what = f"a number in [{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return self.low <= value and (value < self.high if self.high_open else value <= self.high)


class Flag(Field):
    what = "true or false"

    def ok(self, value) -> bool:
        return isinstance(value, bool)


class SubLayer(Field):
    """One sublayer, as a layer description (null too when ``optional``)."""

    def __init__(self, optional: bool = False):
        self.optional = optional
        self.what = "a layer description" + (" or null" if optional else "")

    def ok(self, value) -> bool:
        return (self.optional and value is None) or isinstance(value, dict)


class SubLayers(Field):
    """A list of sublayers, as layer descriptions (at least one)."""

    what = "a non-empty list of layer descriptions"

    def ok(self, value) -> bool:
        return isinstance(value, list) and len(value) > 0


INIT = Choice(*SCHEMES)  # the weight initialisations a trained layer offers


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerType:
    """A registered layer: its class, config fields, required fields and own parameter count."""

    name: str
    cls: type
    fields: dict[str, Field]
    required: frozenset[str]
    parameters: object  # config -> parameters of the layer itself (not of its sublayers)
    takes_rng: bool  # whether the constructor draws initial weights from an ``rng``
    scratch: object  # (config, input shape, output shape) -> values per sample a forward allocates


REGISTRY: dict[str, LayerType] = {}


def register_layer(
    *,
    fields: dict[str, Field] | None = None,
    parameters=None,
    scratch=None,
    name: str | None = None,
    not_config=(),
):
    """Class decorator: declare a layer type with its config ``fields``, ``parameters(config)`` (the
    layer's own parameter count; its sublayers count for themselves) and ``scratch(config, input_shape,
    output_shape)``: the values per sample its forward pass allocates besides its output (a
    convolution's unfolded windows, say; none when not given), which is capped like an output.

    Every constructor argument but ``backend``, ``dtype``, ``rng`` and those named in ``not_config``
    must be a field and every field a constructor argument; those without a default are required in a
    description. The layer's ``config()`` must return field values only (a test checks every registered
    layer).
    """
    fields = dict(fields or {})
    skipped = (*NOT_CONFIG, *not_config)

    def decorate(cls):
        kind = name or cls.__name__
        signature = inspect.signature(cls.__init__)
        arguments = {
            key: p
            for key, p in list(signature.parameters.items())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and key not in skipped
        }
        if set(arguments) != set(fields):
            raise TypeError(
                f"{kind}: the registered fields {sorted(fields)} must be the constructor's arguments "
                f"{sorted(arguments)} (besides {', '.join(NOT_CONFIG)})"
            )
        previous = REGISTRY.get(kind)
        if previous is not None and previous.cls.__qualname__ != cls.__qualname__:
            raise TypeError(f"a layer type named {kind!r} is registered already ({previous.cls.__module__})")
        required = frozenset(key for key, p in arguments.items() if p.default is p.empty)
        count = parameters or (lambda config: 0)
        work = scratch or (lambda config, input_shape, output_shape: 0)
        REGISTRY[kind] = LayerType(kind, cls, fields, required, count, "rng" in signature.parameters, work)
        cls.layer_type = kind
        return cls

    return decorate


def unregister_layer(name: str) -> None:
    """Forget a layer type (for tests that declare a layer of their own)."""
    REGISTRY.pop(name, None)


# -- checking an untrusted description -----------------------------------------------------------


def check_architecture(architecture) -> int:
    """Check a JSON architecture (a list of layer descriptions) against the registry; return its
    parameter count. Raises CheckpointError naming the first layer (by its path, e.g. ``4.body.0``) and
    key that is unknown, missing, of the wrong type, over a cap or nested too deep. Nothing is built."""
    if not isinstance(architecture, list) or not 1 <= len(architecture) <= MAX_LAYERS:
        raise CheckpointError(f"the architecture must be a list of 1 to {MAX_LAYERS} layers")
    counter = {"layers": 0, "parameters": 0}
    for i, entry in enumerate(architecture):
        _check_entry(entry, str(i), counter, depth=0)
    return counter["parameters"]


def _check_entry(entry, path: str, counter: dict, depth: int) -> None:
    counter["layers"] += 1
    if counter["layers"] > MAX_LAYERS:
        raise CheckpointError(f"the architecture has more than {MAX_LAYERS} layers")
    if depth > MAX_DEPTH:
        raise CheckpointError(f"layer {path}: containers nest more than {MAX_DEPTH} deep")
    if not (
        isinstance(entry, dict) and set(entry) == {"type", "config"} and isinstance(entry["config"], dict)
    ):
        raise CheckpointError(f"layer {path} of the architecture is not a {{type, config}} object")
    kind, config = entry["type"], entry["config"]
    if not isinstance(kind, str) or kind not in REGISTRY:
        shown = kind[:40] if isinstance(kind, str) else kind
        raise CheckpointError(f"layer {path} has an unknown type {shown!r} (known: {', '.join(REGISTRY)})")
    spec = REGISTRY[kind]
    unknown = sorted(str(key)[:40] for key in set(config) - set(spec.fields))
    missing = sorted(spec.required - set(config))
    if unknown or missing:
        problem = f"unexpected key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise CheckpointError(f"layer {path} ({kind}): {problem}")
    for key, value in config.items():
        field = spec.fields[key]
        if not field.ok(value):
            raise CheckpointError(
                f"layer {path} ({kind}): {key} must be {field.what}, got {short_repr(value)}"
            )
        if isinstance(field, SubLayers):
            for j, child in enumerate(value):
                _check_entry(
                    child, f"{path}.{key}.{j}" if key != "layers" else f"{path}.{j}", counter, depth + 1
                )
        elif isinstance(field, SubLayer) and value is not None:
            _check_entry(value, f"{path}.{key}", counter, depth + 1)
    own = spec.parameters(config)
    counter["parameters"] += own
    if own > MAX_PARAMETERS or counter["parameters"] > MAX_PARAMETERS:
        raise CheckpointError(
            f"layer {path} ({kind}) brings the model to {counter['parameters']:,} parameters "
            f"(the cap is {MAX_PARAMETERS:,})"
        )


# -- building -------------------------------------------------------------------------------------


def build_layer(entry: dict, *, backend, dtype, rng=None, path: str = "0"):
    """Build one layer (and its sublayers, depth first, in description order) from a description that
    :func:`check_architecture` accepted. Trained layers draw their initial weights from ``rng`` in that
    order, so one seed gives one model. A config its constructor refuses is a CheckpointError."""
    spec = REGISTRY[entry["type"]]
    kwargs = {}
    for key, value in entry["config"].items():
        field = spec.fields[key]
        if isinstance(field, SubLayers):
            kwargs[key] = [
                build_layer(child, backend=backend, dtype=dtype, rng=rng, path=_child_path(path, key, j))
                for j, child in enumerate(value)
            ]
        elif isinstance(field, SubLayer) and value is not None:
            kwargs[key] = build_layer(value, backend=backend, dtype=dtype, rng=rng, path=f"{path}.{key}")
        else:
            kwargs[key] = value
    if spec.takes_rng:
        kwargs["rng"] = rng
    try:
        return spec.cls(**kwargs, backend=backend, dtype=dtype)
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"layer {path} ({spec.name}) has a bad configuration: {exc}") from None


def _child_path(path: str, key: str, index: int) -> str:
    # A Sequential's children are named by index alone, as in parameter names ("4.0.W").
    return f"{path}.{index}" if key == "layers" else f"{path}.{key}.{index}"


def scratch_values(layer, input_shape, output_shape) -> int:
    """The values per sample that ``layer``'s forward pass allocates besides its output, for a sample of
    ``input_shape`` (see :func:`register_layer`; none for a layer type the registry does not know)."""
    spec = REGISTRY.get(layer.layer_type)
    return 0 if spec is None else spec.scratch(layer.config(), input_shape, output_shape)


def describe(layer) -> dict:
    """A layer's description ``{"type": ..., "config": ...}``: what :func:`build_layer` rebuilds it from."""
    return {"type": layer.layer_type, "config": layer.config()}

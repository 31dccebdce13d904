"""The layer registry: every layer type is declared once, beside its class, with its config fields.

``@register_layer(fields=..., param_shapes=...)`` on a :class:`~cnnx.nn.layers.base.Layer` subclass
records what each constructor argument may be (a :class:`~cnnx.nn.fields.Field`: its type and caps) and
the shapes of the parameters a config gives. Everything that needs to know the layer types reads this
one table:

- the constructor itself: its arguments are checked against the fields before it runs, with one error
  type (ConfigError) and one wording for every layer;
- :func:`check_architecture` checks an untrusted JSON architecture (a model file's, a TOML file's)
  before anything is built, with the same fields: known types, allowed and required keys, value types,
  size caps, nesting, the parameter count;
- :func:`build_layer` builds a layer (and its sublayers) from a checked description;
- the model summary and ``cnnx bench``'s labels.

An architecture is a list of layer descriptions ``{"type": name, "config": {...}}``; a container's
config holds its sublayers as descriptions too (a :class:`SubLayer` or :class:`SubLayers` field), so the
description nests as the model does.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

from cnnx.checks import short_repr
from cnnx.errors import CheckpointError, ConfigError

from .fields import (  # noqa: F401  (declared beside the registry: a layer file imports both from here)
    INIT,
    MAX_SIZE,
    Choice,
    Field,
    Flag,
    Number,
    OneOf,
    Optional,
    Size,
    SizePair,
    SubLayer,
    SubLayers,
    pair,
)

# Caps that keep a small hostile description from making cnnx allocate gigabytes; each is far above
# any model cnnx builds (the seed CNN: 234,410 parameters, 21,632 values after its widest layer).
# They count values, not bytes: one description serves float32 and float64 models, and a file may be
# loaded in either. Bytes follow at 4 or 8 a value: one image's widest layer takes at most 80 MB.
# Inference sizes its batches from these bytes (cnnx.nn.model.INFERENCE_BYTES), so a model at the caps
# runs in bounded memory at any requested batch size. MAX_SIZE (any single size) lives with the fields.
MAX_PARAMETERS = 10**8  # per layer and in total
MAX_ACTIVATION = 10**7  # values per image after any layer, and in any layer's scratch (see register_layer)
MAX_LAYERS = 256  # layer descriptions in one architecture, nested ones included
MAX_DEPTH = 8  # containers inside containers
# Constructor arguments that are not config: where the layer lives and where its initial weights come from.
NOT_CONFIG = ("backend", "dtype", "rng")


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerType:
    """A registered layer: its class, config fields, required fields and defaults, and what a config
    gives: a cross-field check, its own parameters' shapes, its output shape, its scratch."""

    name: str
    cls: type
    fields: dict[str, Field]
    required: frozenset[str]
    defaults: dict  # the constructor's defaults of the optional fields
    param_shapes: object  # complete config -> {name: shape} of the layer's own parameters, in order
    check: object  # complete config -> what is wrong with it that no single field can say, or None
    shape: object  # (complete config, per-sample input shape) -> output shape; None: only a built layer knows
    takes_rng: bool  # whether the constructor draws initial weights from an ``rng``
    scratch: object  # (config, input shape, output shape) -> values per sample a forward allocates

    def complete(self, config: dict) -> dict:
        """``config`` with every field it leaves out at the constructor's default."""
        return {**self.defaults, **config}

    def parameters(self, config: dict) -> int:
        """How many parameters of its own (not its sublayers') a layer of ``config`` holds."""
        return sum(math.prod(shape) for shape in self.param_shapes(self.complete(config)).values())

    def refusal(self, config: dict, *, python: bool = False) -> str | None:
        """What is wrong with ``config`` (of known keys), as words that follow the layer's name, or None
        when it is right. ``python`` judges constructor arguments (:meth:`Field.accepts`), otherwise
        JSON values (:meth:`Field.ok`); sublayers are not looked into."""
        for key, value in config.items():
            field = self.fields[key]
            if not (field.accepts(value) if python else field.ok(value)):
                what = field.what_in_python if python else field.what
                return f"{key} must be {what}, got {short_repr(value)}"
        return self.check(self.complete(config))


REGISTRY: dict[str, LayerType] = {}


def register_layer(
    *,
    fields: dict[str, Field] | None = None,
    param_shapes=None,
    output_shape=None,
    check=None,
    scratch=None,
    name: str | None = None,
    not_config=(),
):
    """Class decorator: declare a layer type with its config ``fields`` and what a config gives:

    - ``param_shapes(config)``: the shapes of the layer's own parameters by name, in the order it makes
      them (its sublayers count for themselves). The constructor makes its parameters in these shapes
      (:meth:`Layer.param_shapes`) and the parameter counts read them; none when not given;
    - ``output_shape(config, input_shape)``: the per-sample output shape for a per-sample input shape,
      a ConfigError where the layer does not fit it. A layer's ``output_shape`` method asks this
      (:meth:`Layer.output_shape`), and so does :func:`output_shape` for a description, which builds
      nothing. Not given, the output has the input's shape (unless the class computes its own);
    - ``check(config)``: what is wrong with a config that no single field can say (a convolution's
      "same" padding needs stride 1), as words that follow the layer's name, or None;
    - ``scratch(config, input_shape, output_shape)``: the values per sample its forward pass allocates
      besides its output (a convolution's unfolded windows, say; none when not given), which is capped
      like an output.

    ``param_shapes``, ``output_shape`` and ``check`` get complete configs: a field left out has the
    constructor's default. Every constructor argument but ``backend``, ``dtype``, ``rng`` and those
    named in ``not_config`` must be a field and every field a constructor argument; those without a
    default are required in a description. The constructor's arguments are checked against the fields
    (and ``check``) before it runs: what they refuse is a ConfigError naming the layer type and the
    argument, so a layer's ``__init__`` checks nothing itself. The layer's ``config()`` must return
    field values only (a test checks every registered layer).
    """
    fields = dict(fields or {})
    skipped = (*NOT_CONFIG, *not_config)

    def decorate(cls):
        kind = name or cls.__name__
        # A constructor that is checked already (inherited from a registered class) is checked once, as kind.
        init = getattr(cls.__init__, "unchecked", cls.__init__)
        signature = inspect.signature(init)
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
        spec = LayerType(
            kind, cls, fields,
            required=frozenset(key for key, p in arguments.items() if p.default is p.empty),
            defaults={key: p.default for key, p in arguments.items() if p.default is not p.empty},
            param_shapes=param_shapes or (lambda config: {}),
            check=check or (lambda config: None),
            shape=output_shape or (None if _computes_own_shape(cls) else _same_shape),
            takes_rng="rng" in signature.parameters,
            scratch=scratch or (lambda config, input_shape, output_shape: 0),
        )  # fmt: skip
        REGISTRY[kind] = spec
        cls.__init__ = _checking_arguments(init, spec, signature)
        cls.layer_type = kind
        return cls

    return decorate


def _same_shape(config, input_shape) -> tuple[int, ...]:
    return tuple(input_shape)


def _computes_own_shape(cls) -> bool:
    """Whether ``cls`` overrides Layer.output_shape (which asks the registry) with a method of its own."""
    return not getattr(cls.output_shape, "asks_the_registry", False)


def _checking_arguments(init, spec: LayerType, signature: inspect.Signature):
    """``init`` preceded by the check of its config arguments against ``spec``."""

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)  # a missing or unknown argument: Python's TypeError
        config = {key: value for key, value in bound.arguments.items() if key in spec.fields}
        problem = spec.refusal(config, python=True)
        if problem is not None:
            raise ConfigError(f"{spec.name} {problem}")
        init(self, *args, **kwargs)

    checked.unchecked = init
    return checked


def param_shapes(layer) -> dict[str, tuple[int, ...]]:
    """The shapes of ``layer``'s own parameters by name, as its registration declares them for its config."""
    spec = REGISTRY[layer.layer_type]
    shapes = spec.param_shapes(spec.complete(layer.config()))
    return {key: tuple(int(size) for size in shape) for key, shape in shapes.items()}


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
    problem = spec.refusal(config)
    if problem is not None:
        raise CheckpointError(f"layer {path} ({kind}): {problem}")
    for key, value in config.items():
        field = spec.fields[key]
        if isinstance(field, SubLayers):
            for j, child in enumerate(value):
                _check_entry(child, _child_path(path, key, j), counter, depth + 1)
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


def output_shape(description: dict, input_shape) -> tuple[int, ...]:
    """The per-sample output shape that a layer description gives an input of ``input_shape``, from the
    registrations alone: nothing is built. ConfigError where the layer does not fit that input; a
    TypeError for a type whose class computes its shape without declaring it."""
    spec = REGISTRY[description["type"]]
    if spec.shape is None:
        raise TypeError(f"{spec.name} declares no output_shape: only a built layer knows its shape")
    return tuple(spec.shape(spec.complete(description["config"]), tuple(input_shape)))


def scratch_values(layer, input_shape, output_shape) -> int:
    """The values per sample that ``layer``'s forward pass allocates besides its output, for a sample of
    ``input_shape`` (see :func:`register_layer`; none for a layer type the registry does not know)."""
    spec = REGISTRY.get(layer.layer_type)
    return 0 if spec is None else spec.scratch(layer.config(), input_shape, output_shape)


def describe(layer) -> dict:
    """A layer's description ``{"type": ..., "config": ...}``: what :func:`build_layer` rebuilds it from."""
    return {"type": layer.layer_type, "config": layer.config()}

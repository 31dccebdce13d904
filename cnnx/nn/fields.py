"""Config fields: what each constructor argument of a layer may be, declared once, checked in two places.

A :class:`Field` answers for a value of a JSON description (:meth:`Field.ok`, what
:func:`cnnx.nn.registry.check_architecture` asks of a model file or a TOML file) and for an argument
given to a layer's constructor in Python (:meth:`Field.accepts`, what :func:`cnnx.nn.registry.register_layer`
asks before the constructor runs). The two differ only where Python offers more than JSON: a NumPy
integer as a size, a tuple as a pair, layer objects where a description holds sublayer descriptions.
"""

from __future__ import annotations

import math
import numbers

from cnnx.checks import is_whole_number

from .init import SCHEMES

MAX_SIZE = 1 << 24  # any single size: channels, features, kernel, stride, padding


class Field:
    """One config field: ``what`` it must be (for error messages) and a check of a JSON value."""

    what = "a value"

    @property
    def what_in_python(self) -> str:
        """What a constructor argument for this field must be: ``what``, unless Python takes other things."""
        return self.what

    def ok(self, value) -> bool:
        """Whether ``value``, from a JSON description, is allowed."""
        raise NotImplementedError

    def accepts(self, value) -> bool:
        """Whether ``value``, given to a constructor in Python, is allowed (by default what JSON may hold)."""
        return self.ok(value)


class Size(Field):
    """A whole number in ``minimum``..``maximum``: channels, features, kernel sizes, strides."""

    def __init__(self, minimum: int = 1, maximum: int = MAX_SIZE):
        self.minimum, self.maximum = minimum, maximum
        self.what = f"a whole number in {minimum}..{maximum:,}"

    def ok(self, value) -> bool:
        return is_whole_number(value) and self.minimum <= value <= self.maximum

    def accepts(self, value) -> bool:
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # a NumPy int too
        return whole and self.minimum <= value <= self.maximum


class SizePair(Size):
    """A size, or a pair of them ``[height, width]`` (a tuple too, in Python)."""

    def __init__(self, minimum: int = 1, maximum: int = MAX_SIZE):
        super().__init__(minimum, maximum)
        self.what = f"a whole number in {minimum}..{maximum:,} or a pair of them"

    def ok(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return len(value) == 2 and all(super(SizePair, self).ok(v) for v in value)
        return super().ok(value)

    def accepts(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return len(value) == 2 and all(super(SizePair, self).accepts(v) for v in value)
        return super().accepts(value)


def pair(value) -> tuple[int, int]:
    """A :class:`SizePair` value as (height, width) ints."""
    first, second = value if isinstance(value, (list, tuple)) else (value, value)
    return int(first), int(second)


class Optional(Field):
    """null (None), or what ``field`` allows."""

    def __init__(self, field: Field):
        self.field = field
        self.what = f"null or {field.what}"

    @property
    def what_in_python(self) -> str:
        return f"None or {self.field.what_in_python}"

    def ok(self, value) -> bool:
        return value is None or self.field.ok(value)

    def accepts(self, value) -> bool:
        return value is None or self.field.accepts(value)


class OneOf(Field):
    """What any of ``fields`` allows (a size or the word "same", say)."""

    def __init__(self, *fields: Field):
        self.fields = fields
        self.what = " or ".join(field.what for field in fields)

    @property
    def what_in_python(self) -> str:
        return " or ".join(field.what_in_python for field in self.fields)

    def ok(self, value) -> bool:
        return any(field.ok(value) for field in self.fields)

    def accepts(self, value) -> bool:
        return any(field.accepts(value) for field in self.fields)


class Choice(Field):
    """One of a few strings."""

    def __init__(self, *options: str):
        self.options = options
        self.what = "one of " + ", ".join(options)

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.options


class Number(Field):
    """A finite real number in [low, high]; ``low_open`` or ``high_open`` leave that end out."""

    def __init__(self, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (value < self.high if self.high_open else value <= self.high)

    def accepts(self, value) -> bool:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)  # a NumPy float too
        return real and self.ok(float(value))


class Flag(Field):
    what = "true or false"

    @property
    def what_in_python(self) -> str:
        return "True or False"

    def ok(self, value) -> bool:
        return isinstance(value, bool)


def _is_layer(value) -> bool:
    # A layer's class names its type (cnnx.nn.layers.base.Layer.layer_type): asked here rather than by
    # isinstance, as the layers import this module and not the other way round.
    return isinstance(getattr(type(value), "layer_type", None), str)


class SubLayer(Field):
    """One sublayer: a layer description in JSON, a layer in Python (null / None too when ``optional``)."""

    def __init__(self, optional: bool = False):
        self.optional = optional
        self.what = "a layer description" + (" or null" if optional else "")

    @property
    def what_in_python(self) -> str:
        return "a layer" + (" or None" if self.optional else "")

    def ok(self, value) -> bool:
        return (self.optional and value is None) or isinstance(value, dict)

    def accepts(self, value) -> bool:
        return (self.optional and value is None) or _is_layer(value)


class SubLayers(Field):
    """Sublayers, at least one: a list of layer descriptions in JSON, a list or tuple of layers in Python."""

    what = "a non-empty list of layer descriptions"

    @property
    def what_in_python(self) -> str:
        return "a non-empty list of layers"

    def ok(self, value) -> bool:
        return isinstance(value, list) and len(value) > 0

    def accepts(self, value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(map(_is_layer, value))


INIT = Choice(*SCHEMES)  # the weight initialisations a trained layer offers

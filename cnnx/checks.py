"""Small value checks shared by every package: whole numbers as JSON and the command line give them,
quoting a bad value in a one-line error, and a count with its noun. A leaf module: it imports nothing
from cnnx but errors."""

from __future__ import annotations

import numbers

from .errors import ConfigError


def is_whole_number(value) -> bool:
    """An int that is not a bool: a size or count as JSON or the command line gives it."""
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, not a size


def whole_number(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int when it is a whole number >= ``minimum``, else a ConfigError naming it.

    True and False are refused: they are ints to Python, but a size of True is a mistake, not a 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{owner} {name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, to quote a bad value from a file in a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` with its noun, singular for 1: ``plural(1, "epoch")`` is "1 epoch", ``plural(60000,
    "image")`` "60,000 images"; ``nouns`` is the plural where it is not ``noun + "s"``."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"

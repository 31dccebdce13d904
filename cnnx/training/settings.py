"""The vocabulary a run setting is declared in: what kind of value it takes (:class:`Whole`, :class:`Real`,
:class:`OneOf`, :class:`Text`, :class:`Directory`, :class:`Custom`), its declaration (:func:`setting`:
default, kind, doc, whether a resumed run may change it, what it needs beside it) and the error that
names it (:class:`SettingError`, built of :class:`Setting` parts).

A declaration is all that the rest of cnnx reads: RunConfig checks a value against its kind, the command
line makes an option of it (its type from the kind, its help from the doc), and the resume rules and the
docs' lists come from the same metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math

from cnnx.checks import is_whole_number, short_repr
from cnnx.errors import ConfigError

_NO_VALUE = object()


def option_name(field: str) -> str:
    """How a RunConfig field is spelled on the command line: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Setting:
    """A run setting as a message names it: the field alone (``lr_gamma``), with the value it has
    (``data_dir '/x'``), or with a value to suggest (``assign``: ``validation = 0.1``)."""

    field: str
    value: object = _NO_VALUE
    assign: bool = False

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def spelled(self) -> str:
        """As a run file (TOML) or Python spells it."""
        if not self.has_value:
            return self.field
        if self.assign:
            return f"{self.field} = {json.dumps(self.value) if isinstance(self.value, str) else self.value}"
        return f"{self.field} {short_repr(self.value, 300)}"  # room for a path

    def as_option(self) -> str:
        """As the command line spells it: ``--validation 0.1``."""
        flag = option_name(self.field)
        return f"{flag} {self.value}" if self.has_value else flag


class SettingError(ConfigError):
    """A bad run setting. The message is built from text and :class:`Setting` parts, so that a caller can
    name each setting the way its user wrote it (:meth:`text`); ``str()`` spells them as a run file does,
    after the ``source`` (the file) when there is one. ``field`` is the first setting's."""

    def __init__(self, *parts, source: str | None = None):
        self.parts, self.source = parts, source
        self.field = next((part.field for part in parts if isinstance(part, Setting)), None)
        super().__init__(self.text() if source is None else f"{source}: {self.text()}")

    def text(self, spell=Setting.spelled) -> str:
        """The message without its source, each setting as ``spell(setting)`` writes it."""
        return "".join(part if isinstance(part, str) else spell(part) for part in self.parts)

    def located(self, source: str | None) -> SettingError:
        """The same error, said of the file ``source``."""
        return SettingError(*self.parts, source=source)


# -- kinds of value -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Whole:
    """A whole number from ``low`` to ``high`` (None: no bound above)."""

    low: int
    high: int | None = None
    what: str | None = None

    def ok(self, value) -> bool:
        return is_whole_number(value) and value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.what is not None:
            return self.what
        if self.high is None:
            return f"a whole number >= {self.low}"
        return f"a whole number from {self.low} to {self.high:,}"


@dataclasses.dataclass(frozen=True)
class Real:
    """A finite number between ``low`` and ``high``, each bound excluded when it is ``open``."""

    what: str
    low: float = 0.0
    high: float = math.inf
    low_open: bool = True
    high_open: bool = False

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        return self.what


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of the names in ``options``."""

    options: tuple[str, ...]

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def describe(self) -> str:
        return f"one of {', '.join(self.options)}"


@dataclasses.dataclass(frozen=True)
class Text:
    """A string, e.g. a spec another module parses."""

    what: str

    def ok(self, value) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return self.what


@dataclasses.dataclass(frozen=True)
class Directory:
    """A directory's path (a string that is not empty)."""

    def ok(self, value) -> bool:
        return isinstance(value, str) and value != ""

    def describe(self) -> str:
        return "a directory path"


@dataclasses.dataclass(frozen=True)
class Custom:
    """A value ``check`` accepts. ``options``, when given, are the names the command line offers (a
    preset, where Python and run files may also give a list)."""

    check: object
    what: str
    options: tuple[str, ...] | None = None

    def ok(self, value) -> bool:
        return self.check(value)

    def describe(self) -> str:
        return self.what


# -- declaring a setting --------------------------------------------------------------------------------


def setting(default, kind, doc: str, *, changeable=False, option=True, metavar=None, needs=None):
    """A RunConfig field: its ``default`` (None accepts None), the ``kind`` of value it takes, its ``doc``
    (one sentence or two: the ``--help`` text; ``{other_field}`` names another setting, spelled as the
    reader writes it), whether a resumed run may change it (``changeable``), whether the command line
    has it (``option``, with ``metavar``), and ``needs``: (field, value) when any value but the default
    has no effect unless ``field`` is ``value`` (or, for a field that is None by default, set: ``value``
    is then the example a message suggests)."""
    metadata = {"kind": kind, "doc": doc, "changeable": changeable, "option": option, "metavar": metavar,
                "needs": needs}  # fmt: skip
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(field: dataclasses.Field):
    """A declared field's default value."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def check_value(field: dataclasses.Field, value) -> None:
    """SettingError unless ``value`` is of the field's kind (or None, where the default is None)."""
    if value is None and default_of(field) is None:
        return
    kind = field.metadata["kind"]
    if not kind.ok(value):
        raise SettingError(Setting(field.name), f" must be {kind.describe()}, got {short_repr(value)}")


def check_needs(config, field: dataclasses.Field) -> None:
    """SettingError when the field is given a value that has no effect beside the others (its ``needs``)."""
    needs = field.metadata["needs"]
    if needs is None or getattr(config, field.name) == default_of(field):
        return
    other, value = needs
    wanted = next(f for f in dataclasses.fields(config) if f.name == other)
    if default_of(wanted) is None:  # the other setting must be given, any value: suggest ``value``
        if getattr(config, other) is None:
            raise SettingError(Setting(field.name), " has no effect without ", Setting(other), " (",
                               Setting(other, value, assign=True), ", say)")  # fmt: skip
    elif getattr(config, other) != value:
        raise SettingError(Setting(field.name), " has no effect without ", Setting(other, value, assign=True))


def doc_of(field: dataclasses.Field, spell=lambda name: f"``{name}``") -> str:
    """A field's doc, every setting it names written as ``spell(name)`` (``--lr-gamma`` for the command
    line)."""
    return field.metadata["doc"].format_map(_Spelled(spell))


class _Spelled(dict):
    def __init__(self, spell):
        super().__init__()
        self.spell = spell

    def __missing__(self, key: str) -> str:
        return self.spell(key)

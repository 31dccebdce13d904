"""A checker for any registered layer, a user's included: ``cnnx check-layer TARGET`` and
:func:`check_layer`.

It builds the layer from a config and one sample's input shape (:mod:`.examples`: every built-in type
has a small example, a user's layer may give one with ``example()``), then checks, each as a row of a
table (:mod:`.checks`):

- float64 central finite differences of the input and of every parameter against ``backward``;
- float32 against float64, forward and backward;
- a save/load round trip through a model file, and a move from float64 to float32;
- its random streams: two layers built alike draw alike, and a restored state resumes;
- forward and backward on the strict backend (:mod:`.strict`), which refuses hidden reads from the
  device, as a GPU would make them;
- CPU against GPU, where a GPU is usable (otherwise the row says why it did not run).

The finite differences (:mod:`.gradients`) and the strict backend are the tests' too. This package sits
above ``cnnx.io`` and ``cnnx.nn`` (it writes and reads model files) and below ``cnnx.cli``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import CHECKS, Row
from .examples import EXAMPLES, Subject, subject

__all__ = ["EXAMPLES", "Report", "Row", "check_layer"]


@dataclass(frozen=True)
class Report:
    """What :func:`check_layer` found: the layer checked and one row per check."""

    subject: Subject
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        """Whether no row failed (a check that could not run here is no failure)."""
        return all(row.result != "fail" for row in self.rows)

    def table(self) -> str:
        """The rows as a plain-text table, then a line that counts them."""
        header = ("check", "result", "error", "bound", "")
        cells = [header, *((r.check, r.result, _number(r.error), _bound(r.bound), r.note) for r in self.rows)]
        widths = [max(len(row[c]) for row in cells) for c in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
                 + ("  " + row[4] if row[4] else "") for row in cells]  # fmt: skip
        lines.insert(1, "-" * len(lines[0]))
        counts = {kind: sum(r.result == kind for r in self.rows) for kind in ("pass", "fail", "not run")}
        shape = "x".join(map(str, self.subject.input_shape))
        lines.append(f"{self.subject.name} on inputs of {shape}: {counts['pass']} passed, "
                     f"{counts['fail']} failed, {counts['not run']} not run")  # fmt: skip
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _bound(bound: float | None) -> str:
    return "exact" if bound is None else f"< {bound:.0e}"


def check_layer(target, config=None, input_shape=None) -> Report:
    """Check the layer ``target`` names: a registered type name (``"Dense"``), ``"module:Class"``,
    ``"path/to/file.py:Class"`` or a registered layer class. ``config`` (a dict or JSON text) and
    ``input_shape`` (one sample's, a tuple or ``"3,8,8"``) say what to build; what is left out comes
    from the layer's example. A bad target or config is a one-line ConfigError."""
    what = subject(target, config, input_shape)
    return Report(what, tuple(row for check in CHECKS for row in check(what)))

"""A run's ``metrics.json`` as the grid, ``experiment list`` and the report read it: one reader that checks
the record's shape and gives a :class:`RunRecord`, or a damaged one that says what is wrong.

A results folder is the user's: a record may be cut short, edited by hand or written by another program.
Everything downstream (reuse, the tables, the figures, the findings) reads only what was checked here,
so a damaged record is one line ("damaged metrics.json: ...") and never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from cnnx.checks import is_whole_number
from cnnx.errors import DataError
from cnnx.fileio import open_regular

METRICS = "metrics.json"
MAX_RECORD_BYTES = 64 << 20  # a record with a point for each of 100,000 steps is a few MiB
STATUSES = ("running", "completed", "interrupted", "diverged", "failed")
FINAL = ("completed", "diverged")  # a run in one of these states is a result
DAMAGED = "damaged"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run's record says. ``status`` is one of :data:`STATUSES`, or :data:`DAMAGED` with
    ``problem`` saying why; ``data`` is the whole record (curves, confusion matrix, per-class scores),
    of the shape checked here, and empty when damaged."""

    status: str
    config: dict
    test_accuracy: float | None = None
    steps: int | None = None
    seconds: float | None = None  # the wall time of its epochs, summed
    problem: str | None = None
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def damaged(self) -> bool:
        return self.status == DAMAGED

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def limit(self) -> int | None:
        """The training images it was limited to (a trial), or None for a run on the whole set."""
        return self.config.get("limit")

    def describe(self) -> str:
        """Its state in a few words: "completed, test accuracy 0.8827", "damaged metrics.json (...)"."""
        if self.damaged:
            return f"damaged {METRICS} ({self.problem})"
        text = self.status
        if self.status == "completed":
            text += f", test accuracy {self.test_accuracy:.4f}"
        return text


def read_metrics(directory) -> RunRecord | None:
    """The record in ``directory``: None when it has none, damaged when it cannot be read as a run
    record (not JSON, not a record's shape)."""
    path = Path(directory) / METRICS
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, "rb", what="run record") as handle:  # a FIFO would block the reader
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except DataError as exc:
        return _damaged(str(exc).removeprefix(f"{path}: "))
    except OSError as exc:
        return _damaged(f"cannot read it ({exc.strerror or exc})")
    if len(raw) > MAX_RECORD_BYTES:
        return _damaged(f"larger than {MAX_RECORD_BYTES >> 20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _damaged("not JSON")
    problem = _problem(data)
    if problem is not None:
        return _damaged(problem)
    history = data.get("history") or []
    seconds = sum(row.get("seconds") or 0.0 for row in history) if history else None
    return RunRecord(data["status"], data["config"], data.get("test_accuracy"), data.get("steps_done"),
                     seconds, data=data)  # fmt: skip


def _damaged(problem: str) -> RunRecord:
    return RunRecord(DAMAGED, {}, problem=problem)


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _fraction(value) -> bool:
    return _number(value) and 0 <= value <= 1


def _count(value) -> bool:
    return is_whole_number(value) and value >= 0


def _optional(check):
    return lambda value: value is None or check(value)


# top-level key -> (check, what it must be); every key is optional except status and config
_FIELDS = {
    "config": (lambda v: isinstance(v, dict), "a table"),
    "test_accuracy": (_optional(_fraction), "an accuracy from 0 to 1"),
    "steps_done": (_optional(_count), "a whole number"),
    "epochs_completed": (_optional(_count), "a whole number"),
    "class_names": (
        _optional(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
        "a list of names",
    ),  # fmt: skip
    "history": (_optional(lambda v: isinstance(v, list)), "a list"),
    "curves": (_optional(lambda v: isinstance(v, dict)), "a table"),
    "confusion_matrix": (_optional(lambda v: isinstance(v, list)), "a list of rows"),
    "per_class": (_optional(lambda v: isinstance(v, dict)), "a table"),
}
_ROW = {"epoch": _count, "batches": _count, "seconds": _number, "test_accuracy": _fraction,
        "train_loss": _number, "test_loss": _number}  # fmt: skip


def _problem(data) -> str | None:
    """What is wrong with a record's shape, in a few words; None when nothing is."""
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", bool: "true or false", type(None): "null"}.get(
            type(data), "number"
        )
        return f"a JSON {kind}, not a run record"
    if data.get("status") not in STATUSES:
        return f"status is {_show(data.get('status'))}, not one of {', '.join(STATUSES)}"
    if "config" not in data:
        return "no config"
    for key, (check, what) in _FIELDS.items():
        if not check(data.get(key)):
            return f"{key} is {_show(data.get(key))}, not {what}"
    if data["status"] == "completed" and data.get("test_accuracy") is None:
        return "a completed run without a test accuracy"
    for key in ("limit", "train_size", "batch_size"):
        value = data["config"].get(key)
        if value is not None and not (is_whole_number(value) and value >= 1):
            return f"config.{key} is {_show(value)}, not a whole number >= 1"
    for problem in (_history_problem(data.get("history") or []), _curves_problem(data.get("curves") or {}),
                    _results_problem(data)):  # fmt: skip
        if problem is not None:
            return problem
    return None


def _history_problem(history: list) -> str | None:
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            return f"history[{i}] is {_show(row)}, not a table"
        for key, check in _ROW.items():
            if row.get(key) is not None and not check(row[key]):
                return f"history[{i}].{key} is {_show(row[key])}, not a number"
    return None


def _curves_problem(curves: dict) -> str | None:
    for name, width in (("train", 2), ("test", 3)):
        points = curves.get(name) or []
        ok = isinstance(points, list) and all(
            isinstance(p, list)
            and len(p) == width
            and _count(p[0])
            and all(_optional(_number)(v) for v in p[1:])
            for p in points
        )
        if not ok:
            return f"curves.{name} is not a list of [step, {'loss' if width == 2 else 'loss, accuracy'}]"
    return None


def _results_problem(data: dict) -> str | None:
    """The confusion matrix and per-class scores: square, one row and one entry per class name."""
    matrix, names, per_class = data.get("confusion_matrix"), data.get("class_names"), data.get("per_class")
    if matrix is None and per_class is None:
        return None
    if names is None or not names:
        return "a confusion matrix or per-class scores without class names"
    if matrix is not None and not (
        len(matrix) == len(names)
        and all(isinstance(row, list) and len(row) == len(names) and all(map(_count, row)) for row in matrix)
    ):
        return f"confusion_matrix is not {len(names)} rows of {len(names)} counts"
    if per_class is not None:
        for name in names:
            scores = per_class.get(name)
            if not isinstance(scores, dict) or not all(
                _fraction(scores.get(k)) for k in ("recall", "precision")
            ):
                return f"per_class[{name!r}] has no recall and precision from 0 to 1"
    return None


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."

"""No function in cnnx/training/ or cnnx/cli/ is over 60 lines: the packages where a run's logic lives
stay readable one function at a time. Read from the source with ``ast``; a function's length is from its
``def`` to its last line, docstring and comments included (a click command's decorators, its
options, are declarations, not the function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cnnx/training", "cnnx/cli")
MAX_LINES = 60
# "module:function" -> why it may be longer. Empty: every function fits.
EXCEPTIONS: dict[str, str] = {}


def functions(path: Path):
    """(qualified name, lines) of every function and method in the module at ``path``, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = child.lineno
                yield f"{prefix}{child.name}", child.end_lineno - first + 1
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(tree, "")


MODULES = sorted(path for package in PACKAGES for path in (ROOT / package).glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_function_of_the_training_or_cli_packages_is_over_60_lines(path):
    module = path.stem
    long = [f"{name} ({lines} lines)" for name, lines in functions(path)
            if lines > MAX_LINES and f"{module}:{name}" not in EXCEPTIONS]  # fmt: skip
    assert not long, f"{path.relative_to(ROOT)}: over {MAX_LINES} lines: {', '.join(long)}"


def test_every_exception_to_the_length_rule_names_a_function_that_needs_it():
    lengths = {f"{path.stem}:{name}": lines for path in MODULES for name, lines in functions(path)}
    stale = [name for name in EXCEPTIONS if lengths.get(name, 0) <= MAX_LINES]
    assert not stale, f"exceptions no longer needed (or gone): {stale}"

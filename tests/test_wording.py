"""What the command line says: a count and its noun agree ("1 epoch", "2 epochs"), checked in the source
of every package whose messages reach the console, and through the helper they all use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cnnx.checks import plural

ROOT = Path(__file__).resolve().parents[1]
# The packages whose text this check holds to the rule (the others keep their own wording for now).
CHECKED = ("cnnx/training", "cnnx/cli", "cnnx/bench")
# Nouns that, right after an interpolated number, would read "1 epochs" when the number is 1.
NOUNS = ("epochs", "runs", "steps", "images", "batches", "classes", "files", "layers", "parameters",
         "seconds", "rows", "labels", "values", "threads", "cores", "drops", "points")  # fmt: skip
# Interpolated words, not numbers: f"{name} labels" is "training labels".
WORDS = ("name", "what", "kind", "split")


def test_a_count_takes_the_singular_for_one_and_the_plural_otherwise():
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"
    assert plural(60000, "image") == "60,000 images"


def fixed_plurals(path: Path) -> list[str]:
    """Where an f-string puts a number straight before a plural noun: ``f"{n} epochs"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.JoinedStr):
            continue
        for before, after in zip(node.values, node.values[1:], strict=False):
            number = isinstance(before, ast.FormattedValue) and not (
                isinstance(before.value, ast.Name) and before.value.id in WORDS
            )
            if number and isinstance(after, ast.Constant):
                words = str(after.value).split()
                if str(after.value).startswith(" ") and words and words[0].strip(".,;:)") in NOUNS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {{...}} {words[0]}")
    return found


@pytest.mark.parametrize("package", CHECKED)
def test_no_message_puts_a_number_before_a_fixed_plural(package):
    found = [hit for path in sorted((ROOT / package).rglob("*.py")) for hit in fixed_plurals(path)]
    assert not found, "write these counts with cnnx.checks.plural: " + "; ".join(found)

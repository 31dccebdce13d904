"""The docs where they mirror the code: README's run-file keys and what a resumed run may change,
ARCHITECTURE's IDENTITY and CHANGEABLE lists, its table of modules and its list of commands. Each is
read from the text and compared with the code, so neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnx.training.config import CHANGEABLE, IDENTITY, RunConfig
from cnnx.training.resume import option_name

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")


def between(text: str, start: str, end: str) -> str:
    """The text after the first ``start`` up to the next ``end`` (both must be there), wherever the lines
    of ``text`` break."""
    text = " ".join(text.split())
    assert start in text, f"the docs no longer say {start!r}"
    rest = text.split(start, 1)[1]
    assert end in rest, f"the docs no longer say {end!r} after {start!r}"
    return rest.split(end, 1)[0]


def quoted(text: str, pattern: str = r"`([^`]+)`") -> list[str]:
    return re.findall(pattern, text)


def test_the_readme_lists_every_run_file_key():
    listed = [
        key for key in quoted(between(README, "under these keys:", ". An unknown key")) if key.isidentifier()
    ]
    fields = RunConfig.fields()
    missing, extra = sorted(set(fields) - set(listed)), sorted(set(listed) - set(fields))
    assert sorted(listed) == sorted(fields), f"README.md lacks {missing}; lists {extra}, which are no fields"


def test_the_readme_says_which_options_a_resumed_run_may_change():
    said = between(
        README, "`cnnx train --resume RUN_DIR` continues with the run's recorded settings:", "may change"
    )
    assert sorted(quoted(said)) == sorted(option_name(field) for field in CHANGEABLE)


@pytest.mark.parametrize("name, fields", [("IDENTITY", IDENTITY), ("CHANGEABLE", CHANGEABLE)])
def test_architecture_lists_the_identity_and_changeable_fields(name, fields):
    listed = quoted(between(ARCHITECTURE, f"`{name}` (", ")"))
    assert sorted(listed) == sorted(fields), f"ARCHITECTURE.md's {name}: {listed}, the code's: {list(fields)}"


def table_rows() -> dict[str, str]:
    """ARCHITECTURE's table of modules: folder (``cnnx/training``) -> the row's text."""
    rows = re.findall(r"^\| `((?:cnnx/)?\w+)/` \| (.*) \|$", ARCHITECTURE, flags=re.MULTILINE)
    return dict(rows)


ROWS = table_rows()


def modules_on_disk(folder: Path) -> set[str]:
    """A package's modules as the table names them: ``name.py``, and ``sub/`` for a subpackage."""
    found = {path.name for path in folder.glob("*.py")} | {
        f"{p.parent.name}/" for p in folder.glob("*/__init__.py")
    }
    return found - {"__init__.py"}


@pytest.mark.parametrize("folder", sorted(ROWS))
def test_architectures_table_names_every_module_of_a_package(folder):
    listed = {folder: ROWS[folder]}
    for sub, inner in re.findall(r"`(\w+)/` \(([^)]*)\)", ROWS[folder]):  # a subpackage lists its own
        listed[f"{folder}/{sub}"] = inner
        listed[folder] = listed[folder].replace(f"({inner})", "")
    for where, text in listed.items():
        named = {name for name in quoted(text) if name.endswith((".py", "/"))} - {"__init__.py"}
        on_disk = modules_on_disk(ROOT / where)
        assert named == on_disk, (
            f"{where}: not in the table {sorted(on_disk - named)}, gone {sorted(named - on_disk)}"
        )


def test_architecture_names_every_command():
    from cnnx.cli import cli

    listed = between(ARCHITECTURE, "one small module per command (", ")")
    named = re.findall(r"\w+", listed)
    assert sorted(named) == sorted(cli.commands), f"ARCHITECTURE.md: {named}, the CLI: {sorted(cli.commands)}"

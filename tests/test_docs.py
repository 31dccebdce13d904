"""The docs where they mirror the code. The lists written from the code (tests/docgen.py: README's
``cnnx train`` synopsis, run-file keys and what a resumed run may extend and change, ARCHITECTURE's
IDENTITY and CHANGEABLE lists) must be what the code gives now; the tables written by hand (ARCHITECTURE's
modules and commands, README's presets and layers) are read from the text and compared with the code. So
neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

import docgen
import pytest

from cnnx.training.config import RunConfig

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


@pytest.mark.parametrize("doc", docgen.DOCS)
def test_the_lists_a_doc_mirrors_from_the_code_are_what_the_code_gives(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    wanted = docgen.sections()
    stale = [name for name, body in docgen.marked(text).items() if body != wanted[name]]
    assert not stale, f"{doc}: the lists {stale} differ from the code's: run python tests/docgen.py"


def test_every_generated_list_has_its_place_in_the_docs():
    placed = {name for doc in docgen.DOCS for name in docgen.marked((ROOT / doc).read_text(encoding="utf-8"))}
    missing = sorted(set(docgen.sections()) - placed)
    assert not missing, (
        f"no doc holds the generated lists {missing} (<!-- begin NAME --> ... <!-- end NAME -->)"
    )


def test_the_readme_run_file_keys_are_runconfigs_fields():
    listed = quoted(docgen.marked(README)["run-file-keys"])
    assert listed == list(RunConfig.fields()), f"README.md: {listed}, RunConfig: {list(RunConfig.fields())}"


def test_the_readme_presets_table_names_every_preset_with_its_parameter_count():
    from cnnx.nn import PRESETS, build_model

    rows = {row[0].strip("`"): row[2] for row in markdown_table(README, "| preset | what | parameters |")}
    assert sorted(rows) == sorted(PRESETS), (
        f"README.md's presets: {sorted(rows)}, the code's: {sorted(PRESETS)}"
    )
    counts = {name: f"{build_model(name).parameter_count():,}" for name in PRESETS}
    wrong = {name: (rows[name], counts[name]) for name in PRESETS if rows[name] != counts[name]}
    assert not wrong, f"README.md's parameter counts (README, code): {wrong}"


def test_the_readme_layers_table_names_every_registered_layer_type():
    from cnnx.nn import REGISTRY

    cells = " ".join(row[0] for row in markdown_table(README, "| layer | what it does |"))
    named = set(re.findall(r"`(\w+)(?:\(|`)", cells))
    assert named == set(REGISTRY), (
        f"README.md's layers table lacks {sorted(set(REGISTRY) - named)}, "
        f"names {sorted(named - set(REGISTRY))} that are not registered"
    )


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row is ``header``."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows


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
    named = re.findall(r"[\w-]+", listed)  # check-layer is one name
    assert sorted(named) == sorted(cli.commands), f"ARCHITECTURE.md: {named}, the CLI: {sorted(cli.commands)}"

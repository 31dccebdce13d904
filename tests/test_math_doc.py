"""docs/math.md beside the code: every registered layer type, the loss, the initialisations and the
optimizers have a section that names the file defining them; every ``docs/math.md#anchor`` link in a
docstring reaches a heading of the page; and its math is balanced, so GitHub renders it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnx.nn.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
TEXT = MATH.read_text(encoding="utf-8")
LINK = re.compile(r"docs/math\.md#([\w-]+)")
# Sections beside the layers', by anchor, with a name each must find defined in the file it names.
OTHER_SECTIONS = {
    "softmax-cross-entropy": "softmax_cross_entropy",
    "initialisation": "initial_weight",
    "xavier-glorot-normal": "xavier_normal",
    "he-normal": "he_normal",
    "optimizers": "Optimizer",
    "sgd": "SGD",
    "momentum": "Momentum",
    "adam": "Adam",
    "adamw": "Adam",
    "batch-norm-backward": "_BatchNorm",
    "gru-backpropagation-through-time": "GRU",
}


def github_anchor(heading: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped (letters, digits, '_', '-' and
    spaces stay), spaces to '-', and '-1', '-2', ... after a repeated one."""
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(anchor, 0)
    seen[anchor] = count + 1
    return anchor if count == 0 else f"{anchor}-{count}"


def sections(text: str) -> dict[str, str]:
    """Each heading's anchor -> its text up to the next heading of any level (fenced blocks skipped)."""
    found, seen, anchor, fenced = {}, {}, None, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.+)", line)
        if heading:
            anchor = github_anchor(heading.group(1), seen)
            found[anchor] = ""
        elif anchor is not None:
            found[anchor] += line + "\n"
    return found


SECTIONS = sections(TEXT)


def implementing_files(section: str) -> list[str]:
    """The repository paths quoted on the section's "Implemented in" line."""
    paragraphs = [part.strip() for part in section.split("\n\n")]
    line = next((part for part in paragraphs if part.startswith("Implemented in ")), "")
    return [path for path in re.findall(r"`([^`]+)`", line) if "/" in path]


def defines(path: str, name: str) -> bool:
    source = (ROOT / path).read_text(encoding="utf-8")
    return re.search(rf"^(class|def) {re.escape(name)}\b", source, flags=re.MULTILINE) is not None


def check_section(anchor: str, name: str) -> None:
    assert anchor in SECTIONS, f"docs/math.md has no section #{anchor} (for {name})"
    paths = implementing_files(SECTIONS[anchor])
    assert paths, f"docs/math.md#{anchor} names no file on an 'Implemented in' line"
    missing = [path for path in paths if not (ROOT / path).is_file()]
    assert not missing, f"docs/math.md#{anchor} names files that do not exist: {missing}"
    assert any(defines(path, name) for path in paths), (
        f"docs/math.md#{anchor}: none of {paths} defines {name}"
    )


BUILT_IN = sorted(name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx."))


def test_the_built_in_layers_are_found():
    assert {"Conv2D", "Dense", "GRU", "Sequential"} <= set(BUILT_IN), BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_registered_layer_type_has_a_section_naming_its_file(name):
    check_section(name.lower(), REGISTRY[name].cls.__name__)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_registered_layer_class_links_to_its_section(name):
    links = LINK.findall(REGISTRY[name].cls.__doc__ or "")
    assert name.lower() in links, f"{name}'s docstring has no link docs/math.md#{name.lower()} (has {links})"


@pytest.mark.parametrize("anchor", sorted(OTHER_SECTIONS))
def test_the_loss_initialisations_and_optimizers_have_sections_naming_their_files(anchor):
    check_section(anchor, OTHER_SECTIONS[anchor])


def docstring_links() -> list[tuple[str, str]]:
    """(file, anchor) for every docs/math.md link in the package's source."""
    found = []
    for folder in ("cnnx", "backends"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            found += [(str(path.relative_to(ROOT)), anchor) for anchor in LINK.findall(text)]
    return found


def test_the_source_links_to_the_page():
    linked = {anchor for _, anchor in docstring_links()}
    wanted = {"softmax-cross-entropy", "xavier-glorot-normal", "he-normal", "sgd", "momentum", "adam"}
    assert wanted <= linked, f"no docstring links to docs/math.md#{sorted(wanted - linked)}"


def test_every_link_in_the_source_reaches_a_heading():
    broken = [f"{path}: #{anchor}" for path, anchor in docstring_links() if anchor not in SECTIONS]
    assert not broken, f"links to headings docs/math.md lacks: {broken}"


def test_the_anchor_rule_is_githubs():
    seen: dict[str, int] = {}
    assert github_anchor("Xavier (Glorot) normal", seen) == "xavier-glorot-normal"
    assert github_anchor("Softmax cross-entropy", seen) == "softmax-cross-entropy"
    assert github_anchor("Softmax cross-entropy", seen) == "softmax-cross-entropy-1"


def test_the_math_blocks_are_closed_and_the_dollars_pair():
    fenced, opened_at, odd = None, 0, []
    for number, line in enumerate(TEXT.splitlines(), 1):
        if line.startswith("```"):
            if fenced is None:
                fenced, opened_at = line[3:].strip(), number
            else:
                assert line.strip() == "```", (
                    f"docs/math.md:{number}: a fence opens inside the block of line {opened_at}"
                )
                fenced = None
            continue
        if fenced is None and line.count("$") % 2:
            odd.append(number)  # inline math is kept on one line, so each line pairs its dollars
    assert fenced is None, f"docs/math.md: the ```{fenced} block of line {opened_at} is never closed"
    assert TEXT.count("$$") % 2 == 0, "docs/math.md: an odd number of $$"
    assert not odd, f"docs/math.md: lines with an unpaired $: {odd}"
    assert "```math" in TEXT


def test_no_anchor_of_the_page_is_repeated():
    anchors = set(SECTIONS)
    repeated = sorted(a for a in anchors if re.search(r"-\d+$", a) and a[: a.rindex("-")] in anchors)
    assert not repeated, f"docs/math.md repeats headings (GitHub numbers them): {repeated}"

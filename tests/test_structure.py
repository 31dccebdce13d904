"""The house's architecture, checked from the source: imports point one way (cli over bench and sklearn
over training and layercheck over io, data and optim, over nn, over backends), no module imports itself
back through others, and no module grows past ~400 lines. Imports inside functions count as much as those
at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# Package -> rank: a module may import from lower ranks, its own package and the leaf modules only.
RANKS = {
    "backends": 0,
    "nn": 1,
    "optim": 2,
    "data": 2,
    "io": 2,
    "plugins": 2,  # importing the user's layer modules: needs only cnnx.errors
    "training": 3,
    "layercheck": 3,  # cnnx check-layer: builds layers (nn), writes and reads model files (io)
    "interop": 3,  # ONNX and PyTorch: builds models (nn), reads model files (io); bench uses its mirror
    "bench": 4,
    "sklearn": 4,
    "experiments": 4,
    "explain": 4,
    "demo": 4.5,  # cnnx serve's page: above explain (it explains), below cli (which loads its model)
    "cli": 5,
}
LEAVES = {"cnnx.errors", "cnnx.checks", "cnnx.fileio", "cnnx.version"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in (("cnnx", "cnnx"), ("backends", "cnnx.backends")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The cnnx modules ``name`` imports, anywhere in its source (``from pkg import sub`` counts as sub)."""
    tree = ast.parse(MODULES[name].read_text())
    here = name if is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def package_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def test_the_scanner_sees_relative_and_lazy_imports():
    assert "cnnx.nn.registry" in GRAPH["cnnx.nn.layers.conv"]  # from ..registry import ...
    assert "cnnx.training.metrics" in GRAPH["cnnx.training.records"]  # imported inside a function
    assert "cnnx.nn.functional" in GRAPH["cnnx.nn.layers.activations"]  # from .. import functional


def test_imports_point_down_the_layers_of_the_house():
    wrong = []
    for name, targets in GRAPH.items():
        mine = package_of(name)
        if name == "cnnx" or name == "cnnx.__main__" or mine is None and name not in LEAVES:
            continue  # the public API and the entry point gather everything
        for target in targets:
            theirs = package_of(target)
            if target in LEAVES and target != name:
                continue
            if name in LEAVES or theirs is None or (theirs != mine and RANKS[theirs] >= RANKS[mine]):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the direction of the house: " + ", ".join(sorted(wrong))


def test_no_module_imports_itself_back_through_others():
    cycles, state = [], {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def test_the_short_import_paths_name_the_same_objects_as_the_package_paths():
    import importlib

    import cnnx.nn

    pairs = [("cnnx.layers", "cnnx.nn.layers"), ("cnnx.layers.conv", "cnnx.nn.layers.conv"),
             ("cnnx.layers.base", "cnnx.nn.layers.base"), ("cnnx.functional", "cnnx.nn.functional"),
             ("cnnx.losses", "cnnx.nn.losses"), ("cnnx.init", "cnnx.nn.init")]  # fmt: skip
    for short, full in pairs:
        assert importlib.import_module(short) is importlib.import_module(full), f"{short} is a second copy"
    assert cnnx.nn.REGISTRY["Conv2D"].cls is importlib.import_module("cnnx.layers.conv").Conv2D

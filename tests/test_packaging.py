"""Packaging: the wheel carries every module, backends/ lands as cnnx.backends, and nothing else leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import cnnx
import cnnx.backends

ROOT = Path(__file__).resolve().parents[1]


def source_modules() -> list[str]:
    """Every module in the source tree, by the name it must have once installed."""
    names = []
    for folder, package in (("cnnx", "cnnx"), ("backends", "cnnx.backends")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and parts[-1] == "__main__":
                continue  # running it would start the CLI
            names.append(".".join([package, *parts]))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"building the wheel failed:\n{result.stderr[-2000:]}"
    (path,) = out.glob("cnnx-*.whl")
    return path


def test_tests_import_the_code_of_this_checkout():
    assert Path(cnnx.__file__).resolve().parent == ROOT / "cnnx"
    assert Path(cnnx.backends.__file__).resolve().parent == ROOT / "backends"


def test_wheel_maps_backends_into_cnnx_and_ships_no_top_level_backends(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnnx/backends/__init__.py" in names
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"cnnx"}, f"unexpected top-level entries in the wheel: {sorted(top_level - {'cnnx'})}"


def test_every_module_imports_from_the_installed_wheel_outside_the_repo(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel unpacked is an installed package
    modules = source_modules()
    # Print where each module came from: an editable install elsewhere on the path must not stand in for it.
    code = (
        "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{code}", *modules],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"an installed module failed to import:\n{result.stderr[-2000:]}"
    outside = [line for line in result.stdout.splitlines() if not line.startswith(str(site))]
    assert not outside, f"modules imported from outside the wheel: {outside}"
    assert len(result.stdout.splitlines()) == len(modules)

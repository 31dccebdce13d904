"""docs/tutorial.ipynb: it executes from top to bottom (on small synthetic data, through $CNNX_DATA), its
own asserts hold (the good layer passes check-layer, the broken one fails it), and the committed copy
carries the outputs GitHub shows, with no error and no path of the machine that ran it.

``python tests/test_tutorial.py`` executes the notebook on the real Fashion-MNIST in a scratch folder
and writes it back with its outputs: run it after changing a cell."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
CELL_SECONDS = 300  # one cell's limit; the whole notebook takes about 25 s on the real data, 2 cores


def execute(notebook, folder: Path) -> None:
    """Run every cell of ``notebook`` in place, with ``folder`` as the working directory. The kernel is
    this interpreter's: its folder goes first on PATH, since the kernel spec pip installs says "python"."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    client = NotebookClient(notebook, timeout=CELL_SECONDS, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})  # fmt: skip
    client.execute()


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(value) for key, value in output.get("data", {}).items() if key == "text/plain")
    return "\n".join(parts)


def test_the_tutorial_runs_on_small_data(tmp_path, monkeypatch):
    from helpers import write_blob_idx

    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data", train=600, test=200)
    monkeypatch.setenv("CNNX_DATA", str(data))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend shows the figure
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # execute() prepends; restored afterwards
    monkeypatch.delenv("CNNX_IMPORT", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    execute(notebook, work)  # a failing cell, its own asserts included, raises CellExecutionError
    text = _text(notebook)
    assert "600 training and 200 test images" in text
    assert re.search(r"SiLU on inputs of 4x6x6: 8 passed, 0 failed", text), text
    assert text.count("BrokenSiLU on inputs of 4x6x6: 7 passed, 1 failed") == 2  # Python, then the CLI
    assert "exit status 1" in text
    assert re.search(r"epoch 3: train loss \d", text) and "accuracy" in text  # trained, then evaluated
    assert "all of them:" in text
    assert (work / "runs" / "silu" / "explain" / "index.html").is_file()
    shown = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 1  # the explanation figure


def test_the_committed_notebook_shows_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs for cell in code), "run python tests/test_tutorial.py to fill them"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    text = _text(notebook)
    assert "10,000 training and 2,000 test images" in text  # written on the real data
    for private in ("/work/", "/home/", "/root", "/tmp/", "site-packages"):
        assert private not in text, private


if __name__ == "__main__":
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.pop("MPLBACKEND", None)
        execute(notebook, Path(scratch))
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK} with its outputs")

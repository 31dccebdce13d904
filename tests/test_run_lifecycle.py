"""The life of a run directory, through Python: a closed output stream stops the printing, never the
training."""

from __future__ import annotations

import json
import os
import sys

from cnnx.data import Dataset
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit

from helpers import blobs

SETTINGS = {"epochs": 2, "batch_size": 32, "seed": 0, "progress": "none"}  # 200 images: 7 batches an epoch


def blob_dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


def mlp_and_adam():
    model = build_model("mlp", seed=0)
    return model, make_optimizer("adam", model, 1e-3)


def status_of(out) -> str:
    return json.loads((out / "metrics.json").read_text())["status"]


# -- a closed output ---------------------------------------------------------------------------------------


def test_a_closed_output_stops_the_progress_lines_not_the_training(tmp_path, monkeypatch):
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: every write to the pipe fails with EPIPE
    with os.fdopen(writer, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **{**SETTINGS, "progress": "lines"})
        monkeypatch.undo()
    assert status_of(tmp_path) == "completed", f"status {status_of(tmp_path)}"

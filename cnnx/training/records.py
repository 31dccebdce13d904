"""Run records: ``metrics.json``, the configuration, status, history and results of one run."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from pathlib import Path

import numpy as np  # host: records are written on the host

from cnnx.data import CLASS_NAMES, digest
from cnnx.fileio import atomic_write
from cnnx.version import __version__

from .names import CHECKPOINT

RECORD_FORMAT = "cnnx-run"


def versions() -> dict[str, str | None]:
    """Versions of cnnx, NumPy, CuPy (None when no CuPy wheel is installed) and Python."""
    cupy = None
    for dist in ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"):
        try:
            cupy = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cnnx": __version__, "numpy": np.__version__, "cupy": cupy, "python": platform.python_version()}


def run_record(model, optimizer, dataset, *, epochs, batch_size, seed, extra=None) -> dict:
    """The configuration part of ``metrics.json``: enough to rerun, resume and compare runs."""
    settings = optimizer.config()
    config = {
        "model": model.name,
        "parameters": model.parameter_count(),
        "optimizer": settings["name"],
        "optimizer_options": {k: v for k, v in settings.items() if k not in ("name", "lr", "weight_decay")},
        "lr": optimizer.lr,
        "weight_decay": settings.get("weight_decay", 0.0),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": model.backend.name,
        "backend": model.backend.name,
        "device_description": model.backend.describe(),
        "dtype": str(model.dtype),
        "limit": None,
        "data_source": dataset.source,
        "data_digest": digest(dataset),
        "train_size": len(dataset.train_images),
        "test_size": len(dataset.test_images),
        "versions": versions(),
    }
    config.update(extra or {})
    return {"format": RECORD_FORMAT, "version": 2, "status": "running", "config": config}


def read_record(path) -> dict | None:
    """The run record in ``path`` (a metrics.json), or None when it is missing or not a cnnx record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == RECORD_FORMAT
    return record if ok and isinstance(record.get("config"), dict) else None


def results(
    history: list[dict],
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    names: list[str] | None = None,
    of: dict | None = None,
) -> dict:
    """The outcome part of ``metrics.json``, from the history and the test predictions of the weights
    ``of`` names (``{"file": "best.npz", "epoch": 13}``; None: the last epoch's, in model.npz), which
    the record keeps as ``results_of``."""
    from .metrics import confusion_matrix, per_class_report  # scikit-learn: imported when first needed

    if names is None or len(names) != num_classes:
        names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [str(i) for i in range(num_classes)]
    of = of or {"file": CHECKPOINT, "epoch": history[-1]["epoch"]}
    return {
        "epochs_completed": len(history),
        "history": history,
        "results_of": of,
        "test_accuracy": next(row for row in history if row["epoch"] == of["epoch"])["test_accuracy"],
        "skipped_steps": sum(row.get("skipped", 0) for row in history),
        "class_names": names,
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
        "per_class": per_class_report(labels, predictions, names),
    }


def write_json(path, record: dict) -> Path:
    """Write ``record`` as JSON, atomically: containers of containers indented, others on one line."""
    with atomic_write(path, "w") as handle:
        handle.write(_to_json(record) + "\n")
    return Path(path)


def _to_json(value, depth: int = 0) -> str:
    inner, outer = "  " * (depth + 1), "  " * depth
    nested = (dict, list, tuple)
    if isinstance(value, dict) and any(isinstance(v, nested) for v in value.values()):
        items = [f"{inner}{json.dumps(str(k))}: {_to_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_to_json(v, depth)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, nested) for v in value):
        return "[\n" + ",\n".join(inner + _to_json(v, depth + 1) for v in value) + f"\n{outer}]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_to_json(v, depth) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "null"  # strict JSON has no NaN; a missing value is what it means here
    return json.dumps(value)

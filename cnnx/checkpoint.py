"""Run directories, run records (``metrics.json``) and training checkpoints (``model.npz``).

A checkpoint is a model file (see :mod:`cnnx.modelfile`) whose JSON ``meta`` says where training stood: the
epochs completed, the batches done of the next one with that partial epoch's sums as host numbers, the
global step, the shuffle generator's state from before the current epoch's permutation, the history and
the run's settings. The optimizer's state rides along as ``optim/...`` arrays, any layer state (running
statistics) as ``buffer/...`` arrays. Every file is written to a temporary name and renamed, so a kill at
any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np  # host: checkpoints and records are read and written on the host

from . import __version__
from .errors import CheckpointError, ConfigError, ResourceError
from .fileio import atomic_write, stale_temporaries
from .modelfile import is_whole_number, read_archive

CHECKPOINT = "model.npz"
METRICS = "metrics.json"
OPTIM_PREFIX = "optim/"
BUFFER_PREFIX = "buffer/"
PROBE_PREFIX = ".cnnx-probe-"
FIGURES_BYTES = 2 << 20  # three PNGs of a few hundred KiB at most, rounded up
RECORD_BYTES = 1 << 20  # metrics.json, with room for long histories


# -- run directories ------------------------------------------------------------------------------


def default_run_dir(model_name: str, optimizer_name: str, root="runs") -> Path:
    """``runs/<timestamp>-<model>-<optimizer>``, with a numeric suffix if that name is taken."""
    stem = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{model_name}-{optimizer_name}"
    path, n = Path(root) / stem, 2
    while path.exists():
        path, n = Path(root) / f"{stem}-{n}", n + 1
    return path


def check_run_dir(path, *, need_bytes: int = 0, resume: bool = False) -> Path:
    """Check, without creating anything, that a run can be written to ``path``.

    A new run needs ``path`` absent or an empty directory; a resumed one needs its checkpoint there. The
    directory (or, while it does not exist, its nearest existing parent) must accept a file (a probe file
    is written and removed) and hold ``need_bytes`` of free space. Raises ConfigError with one line.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory")
    if resume and not (path / CHECKPOINT).is_file():
        raise ConfigError(f"{path} holds no checkpoint ({CHECKPOINT}) to resume from")
    if not resume and path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            f"run directory {path} is not empty: choose another --out, remove it, or --resume it"
        )
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot create run directory {path}: {base} is not a directory")
    probe_writable(base)
    check_free_space(base, need_bytes)
    return path


def prepare_run_dir(path, *, need_bytes: int = 0) -> Path:
    """Check the run directory with :func:`check_run_dir`, then create it (and its parents)."""
    path = check_run_dir(path, need_bytes=need_bytes)
    path.mkdir(parents=True, exist_ok=True)
    return path


def probe_writable(directory) -> None:
    """Write and remove a small file in ``directory``; ConfigError with the system's reason if refused."""
    probe = Path(directory) / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"cnnx")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResourceError(f"cannot write in {directory} ({exc.strerror or exc})") from None


def check_free_space(directory, need_bytes: int) -> None:
    """ResourceError when the file system of ``directory`` has less than ``need_bytes`` free."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise ResourceError(
            f"not enough free space in {directory}: {_mib(free)} free, the run needs about {_mib(need_bytes)}"
        )


def estimate_run_bytes(model, optimizer=None) -> int:
    """Disk space a run needs at its peak: two checkpoints (the old one stays until its replacement is
    renamed over it), each the weights plus the optimizer's moments, then the record and the figures."""
    weights = sum(math.prod(p.shape) * p.dtype.itemsize for _, p, _ in model.named_parameters())
    slots = len(getattr(optimizer, "slots", ()))
    return 2 * weights * (1 + slots) + RECORD_BYTES + FIGURES_BYTES


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete what a killed process left half-written in ``run_dir`` (never a finished file)."""
    removed = []
    for name in (CHECKPOINT, METRICS, "curves.png", "confusion_matrix.png", "samples.png"):
        for tmp in stale_temporaries(Path(run_dir) / name):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# -- run records ----------------------------------------------------------------------------------


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
    config = {
        "model": model.name,
        "parameters": model.parameter_count(),
        "optimizer": optimizer.config(),
        "lr": optimizer.lr,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": model.backend.name,
        "device_description": model.backend.describe(),
        "dtype": str(model.dtype),
        "limit": None,
        "data_source": dataset.source,
        "train_size": len(dataset.train_images),
        "test_size": len(dataset.test_images),
        "versions": versions(),
    }
    config.update(extra or {})
    return {"format": "cnnx-run", "version": 1, "status": "running", "config": config}


def read_record(path) -> dict | None:
    """The run record in ``path`` (a metrics.json), or None when it is missing or not a cnnx record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == "cnnx-run"
    return record if ok and isinstance(record.get("config"), dict) else None


def results(history: list[dict], labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """The outcome part of ``metrics.json``, from the history and the last epoch's test predictions."""
    from .data import CLASS_NAMES
    from .metrics import confusion_matrix, per_class_report  # scikit-learn: imported when first needed

    names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [str(i) for i in range(num_classes)]
    return {
        "epochs_completed": len(history),
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"],
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


# -- checkpoints ----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: the model file's header and weights, the training position
    (``meta``), the optimizer state in ``Optimizer.load_state_dict`` form, and layer buffers."""

    path: Path
    header: dict
    meta: dict
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]


def _count(value) -> bool:
    return is_whole_number(value) and value >= 0


# meta key -> (type check, what it must be): checked before anything from the file is used.
_META = {
    "epoch": (_count, "a whole number >= 0"),
    "batch": (_count, "a whole number >= 0"),
    "step": (_count, "a whole number >= 0"),
    "rng_state": (lambda v: isinstance(v, dict), "an object"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects"),
    "partial": (lambda v: isinstance(v, dict), "an object"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "optimizer": (lambda v: isinstance(v, dict), "an object"),
}
_PARTIAL = {"loss_sum": float, "correct": int, "counted": int, "skipped": int, "seconds": float}
# A history row's fields: losses may be null (written for NaN, e.g. the test loss of an empty test set).
_ROW_NUMBERS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
MAX_EPOCHS = 100_000  # far beyond any real run; a tampered count must not mean "train for ever"


def save_checkpoint(path, model, optimizer, meta: dict) -> Path:
    """Save the model with its optimizer state and layer buffers; ``meta`` (JSON) says where training
    stood. Raises DivergenceError, writing nothing, if a weight is not finite: a checkpoint is always a
    good state to resume from."""
    from .divergence import check_weights  # the divergence module imports this one's neighbours

    check_weights(model)
    state = optimizer.state_dict(model.backend.to_host)
    extra = {OPTIM_PREFIX + key: np.asarray(value) for key, value in state.items()}
    extra.update({BUFFER_PREFIX + key: value for key, value in layer_buffers(model).items()})
    return model.save(path, extra=extra, meta={"kind": "checkpoint", **meta})


def load_checkpoint(path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint`; CheckpointError on any defect."""
    header, arrays = read_archive(path)
    meta = header.get("meta")
    if not isinstance(meta, dict) or meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{path}: a model file, but not a training checkpoint")
    for key, (ok, what) in _META.items():
        if key not in meta or not ok(meta[key]):
            raise CheckpointError(f"{path}: checkpoint field {key!r} must be {what}")
    _check_history(path, meta["history"])
    partial = meta["partial"]
    for key, kind in _PARTIAL.items():
        value = partial.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise CheckpointError(f"{path}: checkpoint field partial.{key} must be a number")
        if not math.isfinite(value) or value < 0:
            raise CheckpointError(f"{path}: checkpoint field partial.{key} must be finite and >= 0")
    split = {prefix: {} for prefix in ("param/", OPTIM_PREFIX, BUFFER_PREFIX)}
    for key, value in arrays.items():
        for prefix, table in split.items():
            if key.startswith(prefix):
                table[key[len(prefix) :]] = value
    return Checkpoint(Path(path), header, meta, split["param/"], split[OPTIM_PREFIX], split[BUFFER_PREFIX])


def _check_history(path, history: list[dict]) -> None:
    """Each row: epoch n (1, 2, ...), finite numbers or null for the measures, skipped a count."""
    for n, row in enumerate(history, start=1):
        where = f"{path}: checkpoint history row {n}"
        if set(row) != {"epoch", "skipped", *_ROW_NUMBERS}:
            raise CheckpointError(f"{where} has fields {sorted(row)}, not those of a cnnx history row")
        if row["epoch"] != n or isinstance(row["epoch"], bool) or not _count(row["skipped"]):
            raise CheckpointError(f"{where}: epoch must be {n} and skipped a whole number >= 0")
        for key in _ROW_NUMBERS:
            value = row[key]
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CheckpointError(f"{where}: {key} must be a finite number or null, not {value!r}")


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``meta`` and the optimizer state (``optimizer.load_state_dict`` form) of a checkpoint."""
    checkpoint = load_checkpoint(path)
    return checkpoint.meta, checkpoint.optimizer_state


def layer_buffers(model) -> dict[str, np.ndarray]:
    """Every layer's non-trained state (a layer's optional ``buffers`` dict, e.g. running statistics) as
    host arrays keyed "<layer index>.<key>"."""
    return {
        f"{i}.{key}": np.array(model.backend.to_host(value))
        for i, layer in enumerate(model.layers)
        for key, value in getattr(layer, "buffers", {}).items()
    }


def restore_buffers(model, buffers: dict[str, np.ndarray]) -> None:
    """Copy host arrays from :func:`layer_buffers` back into the layers; CheckpointError on a mismatch."""
    expected = {
        f"{i}.{key}": value
        for i, layer in enumerate(model.layers)
        for key, value in getattr(layer, "buffers", {}).items()
    }
    if set(buffers) != set(expected):
        raise CheckpointError(f"layer buffers {sorted(buffers)} do not match the model's {sorted(expected)}")
    for key, target in expected.items():
        if buffers[key].shape != target.shape:
            raise CheckpointError(f"layer buffer {key} has shape {buffers[key].shape}, needs {target.shape}")
        target[...] = model.backend.to_device(buffers[key], target.dtype)


# -- the settings a resumed run keeps ---------------------------------------------------------------

# cnnx train options a resumed run takes from its checkpoint, with their spelling on the command line
RESUME_FIXED = {
    "model_name": "--model",
    "optimizer_name": "--optimizer",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "limit": "--limit",
    "dtype": "--dtype",
}


def resume_settings(run_dir, given: dict) -> dict:
    """The settings of the run in ``run_dir``, from its checkpoint, for ``cnnx train --resume``.

    ``given`` holds the options the user typed (by parameter name). Those the run fixed (model, optimizer,
    lr, batch size, seed, data limit, dtype) must agree with the checkpoint; ``epochs`` may extend the
    run; ``checkpoint_every``, ``on_divergence`` and ``data_dir`` may change. ConfigError otherwise, and
    when a completed run is given no more epochs.
    """
    run_dir = Path(run_dir)
    if "out" in given:
        raise ConfigError(f"--out cannot be combined with --resume (the run directory is {run_dir})")
    if not (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir} holds no checkpoint ({CHECKPOINT}) to resume from")
    meta = load_checkpoint(run_dir / CHECKPOINT).meta
    saved = meta["settings"]
    recorded = {
        "model_name": saved.get("model"),
        "optimizer_name": meta["optimizer"].get("name"),
        "lr": saved.get("lr"),
        "batch_size": saved.get("batch_size"),
        "seed": saved.get("seed"),
        "limit": saved.get("limit"),
        "dtype": saved.get("dtype"),
    }
    for key, flag in RESUME_FIXED.items():
        if key in given and given[key] != recorded[key]:
            raise ConfigError(
                f"{flag} {given[key]} contradicts the run in {run_dir}, which was started with "
                f"{flag} {recorded[key]}: leave {flag} out when resuming"
            )
    done, batch = meta["epoch"], meta["batch"]
    recorded_epochs = saved.get("epochs")
    if not _count(recorded_epochs) or not 1 <= recorded_epochs <= MAX_EPOCHS:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT}: the recorded number of epochs ({recorded_epochs!r}) is not a whole "
            f"number from 1 to {MAX_EPOCHS}"
        )
    epochs = given.get("epochs", recorded_epochs)
    if done >= epochs and batch == 0:
        raise ConfigError(
            f"the run in {run_dir} already completed its {done} epochs: "
            f"pass --epochs N with N > {done} to train further"
        )
    if done + (batch > 0) > epochs:
        raise ConfigError(
            f"--epochs {epochs} is fewer than the {done + 1} epochs the run in {run_dir} has begun"
        )
    changeable = {
        key: given.get(key, saved.get(key)) for key in ("checkpoint_every", "on_divergence", "data_dir")
    }
    return {**recorded, **changeable, "epochs": epochs, "optimizer": meta["optimizer"]}

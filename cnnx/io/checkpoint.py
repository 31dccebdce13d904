"""Training checkpoints: a model file (see :mod:`cnnx.nn.saving`) that also holds the optimizer's state
and, in its header's ``meta``, where training stood.

``meta`` holds the epochs completed, the batches done of the next one with that partial epoch's sums as
host numbers, the global step, the batch-order generator's state from before the current epoch's
permutation, the history, the run's settings and the optimizer's settings. The model's own state
(weights, layer buffers, the layers' random streams) is the model file's; the optimizer's moments ride
along as ``optim/...`` arrays. The file is written to a temporary name and renamed, so a kill at any
moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # host: checkpoints are read and written on the host

from cnnx.checks import is_whole_number
from cnnx.errors import CheckpointError
from cnnx.nn.saving import OPTIM_PREFIX

from .modelfile import model_state, read_archive, split_arrays


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: the model file's header, the model's state (parameters, buffers
    and streams, in ``load_state_dict`` form), the training position (``meta``) and the optimizer state
    in ``Optimizer.load_state_dict`` form."""

    path: Path
    header: dict
    meta: dict
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


def _count(value) -> bool:
    return is_whole_number(value) and value >= 0


def _pcg64_state(value) -> bool:
    """A PCG64 generator's state as NumPy gives it (``rng.bit_generator.state``): state and increment
    below 2**128 (the increment odd, as PCG64's always is), has_uint32 0 or 1, uinteger below 2**32.
    Anything else would make NumPy raise (an OverflowError for 2**200) or give a broken stream."""
    if not isinstance(value, dict) or set(value) != {"bit_generator", "state", "has_uint32", "uinteger"}:
        return False
    inner = value["state"]
    return (
        value["bit_generator"] == "PCG64"
        and isinstance(inner, dict)
        and set(inner) == {"state", "inc"}
        and all(_count(inner[key]) and inner[key] < 1 << 128 for key in ("state", "inc"))
        and inner["inc"] % 2 == 1
        and is_whole_number(value["has_uint32"])
        and value["has_uint32"] in (0, 1)
        and _count(value["uinteger"])
        and value["uinteger"] < 1 << 32
    )


_PCG64 = "a PCG64 state (state and inc whole numbers below 2**128, has_uint32 0 or 1, uinteger below 2**32)"
_EARLY_FIELDS = {"best_loss", "best_epoch", "waited"}


# meta key -> (type check, what it must be): checked before anything from the file is used.
_META = {
    "epoch": (_count, "a whole number >= 0"),
    "batch": (_count, "a whole number >= 0"),
    "step": (_count, "a whole number >= 0"),
    "rng_state": (_pcg64_state, "the shuffle generator's state, " + _PCG64),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects"),
    "partial": (lambda v: isinstance(v, dict), "an object"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "optimizer": (lambda v: isinstance(v, dict), "an object"),
}
_PARTIAL = {"loss_sum": float, "correct": int, "counted": int, "skipped": int, "seconds": float}
_PARTIAL_OPTIONAL = {"window_loss": float, "window_count": int}  # the step curve's open window (cnnx 0.3)
# A history row's fields: losses may be null (written for NaN, e.g. the test loss of an empty test set).
_ROW_NUMBERS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")


def save_checkpoint(path, model, optimizer, meta: dict) -> Path:
    """Save the model with its optimizer's state; ``meta`` (JSON) says where training stood. The caller
    checks first that the weights are finite: a checkpoint is always a good state to resume from."""
    state = optimizer.state_dict(model.backend.to_host)
    extra = {OPTIM_PREFIX + key: np.asarray(value) for key, value in state.items()}
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
    _check_curves(path, meta.get("curves", {"train": [], "test": []}))
    if "augment_rng_state" in meta and not _pcg64_state(meta["augment_rng_state"]):
        raise CheckpointError(
            f"{path}: checkpoint field 'augment_rng_state' must be the augmentation's state, {_PCG64}"
        )
    if "early" in meta:
        _check_early(path, meta["early"], meta["epoch"])
    partial = meta["partial"]
    optional = {key: kind for key, kind in _PARTIAL_OPTIONAL.items() if key in partial}
    for key, kind in {**_PARTIAL, **optional}.items():
        value = partial.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise CheckpointError(f"{path}: checkpoint field partial.{key} must be a number")
        if not math.isfinite(value) or value < 0:
            raise CheckpointError(f"{path}: checkpoint field partial.{key} must be finite and >= 0")
    optimizer_state = split_arrays(arrays)[OPTIM_PREFIX]
    return Checkpoint(Path(path), header, meta, model_state(arrays), optimizer_state)


def _check_history(path, history: list[dict]) -> None:
    """Each row: epoch n (1, 2, ...), finite numbers or null for the measures, skipped a count."""
    for n, row in enumerate(history, start=1):
        where = f"{path}: checkpoint history row {n}"
        if set(row) - {"batches", "val_loss", "val_accuracy"} != {"epoch", "skipped", *_ROW_NUMBERS}:
            raise CheckpointError(f"{where} has fields {sorted(row)}, not those of a cnnx history row")
        if "batches" in row and not (_count(row["batches"]) and row["batches"] >= 1):
            raise CheckpointError(f"{where}: batches (of an epoch cut short) must be a whole number >= 1")
        if row["epoch"] != n or isinstance(row["epoch"], bool) or not _count(row["skipped"]):
            raise CheckpointError(f"{where}: epoch must be {n} and skipped a whole number >= 0")
        for key in (*_ROW_NUMBERS, *({"val_loss", "val_accuracy"} & set(row))):
            value = row[key]
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CheckpointError(f"{where}: {key} must be a finite number or null, not {value!r}")


def _check_early(path, early, epoch: int) -> None:
    """Early stopping's state: the best validation loss (a finite number, or null before any), the best
    epoch (0 before any) and the epochs waited since, neither beyond the epochs done."""
    ok = (
        isinstance(early, dict)
        and set(early) == _EARLY_FIELDS
        and _number_or_null(early["best_loss"])
        and all(_count(early[key]) and early[key] <= epoch for key in ("best_epoch", "waited"))
    )
    if not ok:
        raise CheckpointError(
            f"{path}: checkpoint field 'early' must be an object of best_loss (a finite number or null), "
            f"best_epoch and waited (whole numbers from 0 to the {epoch} epochs done)"
        )


def _number_or_null(value) -> bool:
    return value is None or (
        not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    )


def _check_curves(path, curves) -> None:
    """Step curves: train rows [step, loss or null], test rows [step, loss or null, accuracy or null]."""
    ok = isinstance(curves, dict) and set(curves) == {"train", "test"}
    for key, width in (("train", 2), ("test", 3)):
        rows = curves.get(key) if ok else None
        ok = ok and isinstance(rows, list) and all(
            isinstance(r, list) and len(r) == width and _count(r[0]) and all(map(_number_or_null, r[1:]))
            for r in rows
        )  # fmt: skip
    if not ok:
        raise CheckpointError(f"{path}: checkpoint field 'curves' must hold train and test rows of numbers")


def check_optimizer_state(flat: dict, optimizer, path=None) -> dict:
    """``flat``, an optimizer state read from a checkpoint (``path``), once it is fit for
    ``optimizer.load_state_dict``: the step count a whole number >= 0 (a 0-d integer array is read as
    one), every other key "<slot>/<parameter>" for a slot the optimizer keeps and a parameter of its
    target, with that parameter's shape and dtype and only finite values; a trained state (steps > 0)
    holds every slot of every parameter. CheckpointError names the first problem."""
    where = f"{path}: optimizer state" if path is not None else "optimizer state"
    steps = flat.get("steps")
    if hasattr(steps, "dtype") and getattr(steps, "shape", None) == () and steps.dtype.kind in "iu":
        steps = int(steps)  # a 0-d integer array from a checkpoint
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise CheckpointError(f"{where}: the step count must be a whole number >= 0, got {steps!r}")
    params = {name: param for name, param, _ in optimizer.target.named_parameters()}
    seen: dict[str, set] = {}
    for key, value in flat.items():
        if key == "steps":
            continue
        slot, _, name = key.partition("/")
        if slot not in optimizer.slots or name not in params:
            raise CheckpointError(f"{where}: unexpected entry {key!r} for {optimizer.name}")
        param = params[name]
        if tuple(value.shape) != tuple(param.shape) or np.dtype(value.dtype) != np.dtype(str(param.dtype)):
            raise CheckpointError(f"{where}: {key} is {value.dtype}{list(value.shape)}, the parameter is "
                                  f"{param.dtype}{list(param.shape)}")  # fmt: skip
        if not (abs(value).max(initial=0) < math.inf):  # a NaN compares False too
            raise CheckpointError(f"{where}: {key} holds NaN or infinite values")
        seen.setdefault(slot, set()).add(name)
    missing = [
        f"{slot}/{name}" for slot in optimizer.slots for name in params if name not in seen.get(slot, ())
    ]
    if steps > 0 and missing:
        raise CheckpointError(f"{where} after {steps} steps lacks {missing[0]}")
    return {**flat, "steps": steps}

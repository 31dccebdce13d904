"""A validation split carved from the training set, and early stopping on it."""

from __future__ import annotations

import math

import numpy as np  # host

from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.io import load_model

from .names import BEST, CHECKPOINT
from .step import evaluate


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """(the training set without its validation part, validation images, validation labels): a seeded,
    stratified ``fraction`` of the training set, the same for the same seed and data."""
    from sklearn.model_selection import train_test_split  # scikit-learn: imported when first needed

    index = np.arange(len(dataset.train_labels))
    try:
        keep, held = train_test_split(index, test_size=fraction, stratify=dataset.train_labels,
                                      random_state=seed % 2**32)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(
            f"a validation split of {fraction:g} cannot be taken from this training set ({exc})"
        ) from None
    keep, held = np.sort(keep), np.sort(held)
    rest = Dataset(dataset.train_images[keep], dataset.train_labels[keep], dataset.test_images,
                   dataset.test_labels, source=dataset.source, class_names=dataset.class_names)  # fmt: skip
    return rest, dataset.train_images[held], dataset.train_labels[held]


class EarlyStopping:
    """Stops a run once the validation loss has not improved (fallen by more than ``min_delta`` below
    the best) for ``patience`` epochs in a row, and remembers the best epoch (whose weights the run
    keeps in best.npz) and, once known, its test predictions."""

    def __init__(self, patience: int | None, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch, self.waited = math.inf, 0, 0
        self.best_predictions = None  # host; not in the state: a resumed run scores best.npz anew

    @classmethod
    def for_run(cls, config) -> EarlyStopping:
        """What a run's RunConfig asks for: ``early_stopping`` epochs of patience (None: it watches the
        best epoch without ever stopping), improvements beyond ``min_delta``."""
        return cls(config.early_stopping, config.min_delta)

    def update(self, epoch: int, val_loss: float, predictions=None) -> tuple[bool, bool]:
        """Record an epoch's validation loss (and its test predictions): (it is the best so far, the run
        should stop now)."""
        improved = math.isfinite(val_loss) and val_loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_predictions = predictions
        else:
            self.waited += 1
        return improved, self.patience is not None and self.waited >= self.patience

    def state(self) -> dict:
        return {"best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
                "best_epoch": self.best_epoch, "waited": self.waited}  # fmt: skip

    def load(self, state: dict) -> None:
        loss = state.get("best_loss")
        self.best_loss = math.inf if loss is None else float(loss)
        self.best_epoch, self.waited = int(state.get("best_epoch", 0)), int(state.get("waited", 0))


def reported(run, predictions) -> tuple[np.ndarray | None, dict]:
    """(test predictions, which weights they are) of what a :class:`~cnnx.training.loop.Run` reports: the
    best epoch's on validation (best.npz, which cnnx evaluate uses) when the run kept them, else the last
    epoch's (``predictions``, in model.npz). Weights are named as ``{"file": "best.npz", "epoch": 13}``
    (the file None when the run writes no files)."""
    early = run.early
    best = 0 if early is None else early.best_epoch
    if best and early.best_predictions is None and run.out is not None and (run.out / BEST).is_file():
        # Resumed after its best epoch: best.npz is scored once, from the file.
        model = load_model(run.out / BEST, device=run.backend, dtype=run.model.dtype)
        early.best_predictions = evaluate(model, run.test_images, run.test_labels, run.batch_size)[2]
    if not best or early.best_predictions is None:
        return predictions, {"file": CHECKPOINT, "epoch": run.epoch_done}
    return early.best_predictions, {"file": BEST if run.out is not None else None, "epoch": best}

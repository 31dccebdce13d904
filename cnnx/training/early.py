"""A validation split carved from the training set, and early stopping on it."""

from __future__ import annotations

import math

import numpy as np  # host

from cnnx.data import Dataset
from cnnx.errors import ConfigError

BEST = "best.npz"  # the best-on-validation weights, in the run directory


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
    """Stops a run once the validation loss has not improved for ``patience`` epochs in a row, and
    remembers the best epoch (whose weights the run keeps in best.npz)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best_loss, self.best_epoch, self.waited = math.inf, 0, 0

    def update(self, epoch: int, val_loss: float) -> tuple[bool, bool]:
        """Record an epoch's validation loss: (it is the best so far, the run should stop now)."""
        improved = math.isfinite(val_loss) and val_loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
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

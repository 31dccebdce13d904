"""Classification metrics on host arrays: the confusion matrix and a per-class report.

Everything here takes NumPy label vectors (call ``backend.to_host`` first) and leans on scikit-learn for
the definitions, so the numbers mean exactly what the scikit-learn documentation says they mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def _labels(values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-d vector, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def confusion_matrix(labels, predictions, num_classes: int = 10) -> np.ndarray:
    """A (num_classes, num_classes) count matrix: row = true class, column = predicted class.

    Every class gets its row and column even if absent from both vectors, so matrices from different
    runs (or a ``--limit``-ed test set) always line up.
    """
    return skm.confusion_matrix(_labels(labels), _labels(predictions), labels=np.arange(num_classes))


def per_class_report(labels, predictions, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support for each class, keyed by class name, plus "macro avg".

    A class that is never predicted (or never present) gets 0.0 where its score is undefined, rather
    than a warning in the middle of a training log.
    """
    labels, predictions = _labels(labels), _labels(predictions)
    classes = np.arange(len(class_names))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    report = {
        str(name): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    report["macro avg"] = {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "support": int(support.sum()),
    }
    return report


def format_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix as a text table (rows = true class, columns = predicted, abbreviated)."""
    names = [str(n) for n in class_names]
    width = max(5, len(str(int(matrix.max(initial=0)))) + 1)
    label_width = max(len(n) for n in names)
    header = " " * label_width + "".join(f"{n[: width - 1]:>{width}}" for n in names)
    rows = [
        f"{name:<{label_width}}" + "".join(f"{int(v):>{width}}" for v in row)
        for name, row in zip(names, matrix, strict=True)
    ]
    return "\n".join([header, *rows])


def format_report(report: dict[str, dict[str, float]]) -> str:
    """The per-class report as a text table with precision, recall, F1 and support columns."""
    label_width = max(len(name) for name in report)
    lines = [f"{'':<{label_width}}  precision  recall      f1  support"]
    for name, row in report.items():
        lines.append(
            f"{name:<{label_width}}  {row['precision']:>9.3f}  {row['recall']:>6.3f}  {row['f1']:>6.3f}"
            f"  {row['support']:>7d}"
        )
    return "\n".join(lines)

"""Classification metrics from labels and predictions: the confusion matrix, per-class
precision and recall, and their text table (what `cnncc evaluate` prints)."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def precision_recall(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: precision = right / predicted as it, recall = right / truly it (NaN when the
    class was never predicted, or never present)."""
    right = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return right / matrix.sum(axis=0), right / matrix.sum(axis=1)


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}%"


def classification_text(matrix: np.ndarray) -> str:
    """Per-class precision/recall/support, then the confusion matrix (rows true, columns predicted)."""
    precision, recall = precision_recall(matrix)
    classes = matrix.shape[0]
    lines = ["class  precision  recall  support"]
    for k in range(classes):
        lines.append(f"{k:>5}  {_percent(precision[k]):>9}  {_percent(recall[k]):>6}  {int(matrix[k].sum()):>7,}")
    width = max(5, max(len(f"{int(v):,}") for v in matrix.flat) if matrix.size else 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * 6 + " ".join(f"{k:>{width}}" for k in range(classes))]
    for k in range(classes):
        lines.append(f"{k:>5} " + " ".join(f"{int(v):>{width},}" for v in matrix[k]))
    return "\n".join(lines)

"""Pictures of a run: training curves from a History and a confusion matrix, as PNG files.

matplotlib is an optional extra (`pip install 'cnncc[plot]'`); nothing else in cnncc needs
it, and without it these functions raise PlotError saying what to install.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'cnncc[plot]' (or: pip install matplotlib)"


class PlotError(RuntimeError):
    """A plot cannot be drawn (matplotlib missing, nothing to draw)."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib() -> None:
    """Raise PlotError now if plots cannot be drawn (so a long run does not fail at its end)."""
    _pyplot()


def _save(figure, path) -> Path:
    from .files import write_bytes_atomically

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise PlotError(f"{path}: plots are written as PNG; give a path ending in .png")
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_bytes_atomically(path, buffer.getvalue(), make_parents=True)
    return path


def plot_history(history, path, title: str | None = None) -> Path:
    """Loss and (where the loss has one) accuracy against epoch, training and validation."""
    if len(history) == 0:
        raise PlotError("the history holds no epochs: nothing to plot")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "val_loss", "loss")]
    if "accuracy" in history or "val_accuracy" in history:
        panels.append(("accuracy", "val_accuracy", "accuracy"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    epochs = history.epochs
    for axis, (train, val, label) in zip(axes[0], panels):
        for column, name, style in ((train, "training", "o-"), (val, "validation", "s--")):
            values = history[column]
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                axis.plot(*zip(*points), style, label=name, markersize=4)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_confusion(matrix: np.ndarray, path, labels=None, title: str | None = None) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with each cell's count."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    classes = matrix.shape[0]
    labels = [str(k) for k in range(classes)] if labels is None else [str(label) for label in labels]
    size = max(4.0, 0.45 * classes + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(classes), labels)
    axis.set_yticks(range(classes), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if classes <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for true in range(classes):
            for predicted in range(classes):
                count = matrix[true, predicted]
                axis.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > threshold else "black")
    if title:
        axis.set_title(title)
    figure.tight_layout()
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)

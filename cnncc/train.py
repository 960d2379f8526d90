"""Training from Python: fit, evaluate, learning-rate schedules, the progress bar.

One C call per step (`train_step` does forward, loss, backward and the update); the
dataset is validated and converted once, and each batch is gathered into a preallocated
buffer, so the Python side does no per-step allocation of batch-sized arrays.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

SCHEDULES = ("constant", "step", "cosine")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the weights are those of the last good step."""


def learning_rate(schedule: str, base: float, epoch: int, epochs: int, step_size: int = 1,
                  gamma: float = 0.1) -> float:
    """The learning rate of a 0-based epoch."""
    if schedule == "constant":
        return base
    if schedule == "step":
        return base * gamma ** (epoch // step_size)
    if schedule == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def measures_accuracy(model) -> bool:
    """Accuracy means something for classification losses, not for mse (the loss's metric)."""
    return model.program.loss.rules.metric == "accuracy"


def accuracy_hits(model, outputs: np.ndarray, targets: np.ndarray) -> int:
    """Correct predictions in a batch, as the loss counts them."""
    return model.program.loss.rules.hits(outputs, targets)


class Progress:
    """One line per epoch, redrawn in place on a terminal; a plain summary line otherwise."""

    def __init__(self, epoch: int, epochs: int, total: int, verbose: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = verbose > 0
        self.live = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.prefix = f"epoch {epoch}/{epochs}"
        self.total = total
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, done: int, loss: float, accuracy: float | None, final: bool = False) -> None:
        if not self.enabled or (not self.live and not final):
            return
        now = time.perf_counter()
        if not final and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "=" * filled + (">" if filled < width else "") + " " * max(width - filled - 1, 0)
        acc = f"  acc {100 * accuracy:5.1f}%" if accuracy is not None else ""
        tail = f"{elapsed:.1f}s" if final else f"ETA {(self.total - done) / max(rate, 1e-9):.0f}s"
        line = f"{self.prefix} [{bar}] {done}/{self.total}  loss {loss:.4f}{acc}  {rate:,.0f} img/s  {tail}"
        if self.live:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def fit(model, x, y, epochs: int | None = None, batch_size: int | None = None, validation_data=None,
        shuffle: bool = True, seed: int = 0, verbose: int = 1, lr: float | None = None,
        schedule: str | None = None, checkpoint=None, initial_epoch: int = 0,
        distributed=None) -> dict[str, list]:
    """Train; returns the history: per-epoch loss, accuracy, lr, images/s (and validation).
    distributed: a cnncc.distributed.MPI() to train data-parallel over MPI ranks."""
    training = model.spec.training
    epochs = epochs or training["epochs"]
    batch_size = batch_size or training["batch_size"]
    schedule = schedule or training["schedule"]
    base_lr = lr if lr is not None else model.program.optimizer.lr
    x = model.validated_inputs(x)
    y = model.validated_targets(y, x.shape[0])
    n = x.shape[0]
    batch_size = min(batch_size, n)
    if distributed is not None:
        from .distributed_fit import distributed_fit

        return distributed_fit(model, x, y, distributed, epochs=epochs, batch_size=batch_size, schedule=schedule,
                               base_lr=base_lr, validation_data=validation_data, shuffle=shuffle, seed=seed,
                               verbose=verbose, checkpoint=checkpoint, initial_epoch=initial_epoch)
    rng = np.random.default_rng(seed)
    batch_x = np.empty((batch_size,) + x.shape[1:], model.dtype)
    batch_y = np.empty((batch_size,) + y.shape[1:], y.dtype)
    history: dict[str, list] = {"loss": [], "accuracy": [], "lr": [], "images_per_second": []}
    if validation_data is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    with_accuracy = measures_accuracy(model)

    for epoch in range(initial_epoch, epochs):
        model.hyper["lr"] = learning_rate(schedule, base_lr, epoch, epochs, training["step_size"],
                                          training["gamma"])
        order = rng.permutation(n) if shuffle else np.arange(n)
        progress = Progress(epoch + 1, epochs, n, verbose)
        total_loss, hits, seen = 0.0, 0, 0
        start = time.perf_counter()
        for batch_index, first in enumerate(range(0, n, batch_size)):
            index = order[first:first + batch_size]
            count = index.shape[0]
            bx, by = batch_x[:count], batch_y[:count]
            np.take(x, index, axis=0, out=bx)
            np.take(y, index, axis=0, out=by)
            # Dropout masks: a distinct, reproducible stream per (seed, step).
            loss = model.train_step(bx, by, seed=seed * 1_000_003 + model.step_count + 1, checked=True)
            if not math.isfinite(loss):
                where = f" (last checkpoint: {checkpoint})" if checkpoint and epoch > initial_epoch else ""
                raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, batch {batch_index + 1}; "
                                    f"the weights are those before this batch{where}. Try a lower learning "
                                    "rate or check the data for extreme values.")
            total_loss += loss * count
            seen += count
            if with_accuracy:
                hits += accuracy_hits(model, model.last_output(count), by)
            progress.update(seen, total_loss / seen, hits / seen if with_accuracy else None)
        elapsed = time.perf_counter() - start
        accuracy = hits / seen if with_accuracy else None
        progress.update(seen, total_loss / seen, accuracy, final=True)
        history["loss"].append(total_loss / seen)
        history["accuracy"].append(accuracy)
        history["lr"].append(model.hyper["lr"])
        history["images_per_second"].append(seen / max(elapsed, 1e-9))
        if validation_data is not None:
            result = evaluate(model, *validation_data)
            history["val_loss"].append(result["loss"])
            history["val_accuracy"].append(result["accuracy"])
            if verbose:
                acc = f", accuracy {100 * result['accuracy']:.2f}%" if result["accuracy"] is not None else ""
                print(f"  validation: loss {result['loss']:.4f}{acc}", file=sys.stderr)
        if checkpoint:
            model.save(checkpoint, epoch=epoch + 1)
    return history


def evaluate(model, x, y, batch_size: int = 1000) -> dict[str, float | None]:
    """Mean loss (inference mode) and accuracy over a dataset."""
    x = model.validated_inputs(x)
    y = model.validated_targets(y, x.shape[0])
    with_accuracy = measures_accuracy(model)
    total_loss, hits = 0.0, 0
    for first in range(0, x.shape[0], batch_size):
        bx, by = x[first:first + batch_size], y[first:first + batch_size]
        total_loss += model.loss(bx, by, training=False, checked=True) * bx.shape[0]
        if with_accuracy:
            hits += accuracy_hits(model, model.last_output(bx.shape[0]), by)
    n = x.shape[0]
    return {"loss": total_loss / n, "accuracy": hits / n if with_accuracy else None}

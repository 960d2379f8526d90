"""Training from Python: fit and evaluate.

One C call per step (`train_step` does forward, loss, backward and the update); the
dataset is validated and converted once, and each batch is gathered into a preallocated
buffer, so the Python side does no per-step allocation of batch-sized arrays.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .augment import Augment
from .callbacks import Run, check_callbacks
from .fit_args import (MAX_BATCH, SCHEDULES, check_positive_int, checked_arrays, fit_options, gather_batch,
                       training_arrays)
from .history import History
from .progress import Progress


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the weights are those of the last good step."""


_SHUFFLE_STREAM = 0x5F  # keeps the shuffle's random numbers apart from augmentation's (augment.py)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order fit visits the n samples in at `epoch` (from 0): a function of the seed and the
    epoch alone, so a fit resumed at epoch k (`initial_epoch=k` after `load`) visits them as the
    uninterrupted fit did, on one process or over MPI ranks (distributed_fit)."""
    return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(n) if shuffle else np.arange(n)


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


def predicted_classes(model, outputs: np.ndarray) -> np.ndarray | None:
    """The class of each output for a loss with classes (the argmax of softmax_cross_entropy), else None."""
    if model.program.loss.takes_labels:
        return outputs.argmax(axis=1)
    return None


def fit(model, x, y, epochs: int | None = None, batch_size: int | None = None, validation_data=None,
        shuffle: bool = True, seed: int | None = 0, verbose: int = 1, lr: float | None = None,
        schedule: str | None = None, checkpoint=None, initial_epoch: int = 0, validation_split: float | None = None,
        callbacks=None, augment=None, distributed=None) -> History:
    """Train; returns the History (per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds,
    images/s). Every argument and the data are checked before the first step; None means the
    spec's training setting (or the optimizer's lr). distributed: a cnncc.distributed.MPI() to
    train data-parallel over MPI ranks."""
    options = fit_options(model, epochs, batch_size, lr, schedule, seed, verbose, shuffle, initial_epoch,
                          validation_split, checkpoint, validation_data)
    epochs, schedule, seed, base_lr = options["epochs"], options["schedule"], options["seed"], options["lr"]
    callbacks = check_callbacks(callbacks)
    augment = Augment.from_options(model.spec.training["augment"] if augment is None else augment)
    if augment is not None:
        augment.check_shape(model.input_shape)
    x, y, validation_data = training_arrays(model, x, y, validation_data, validation_split)
    n = x.shape[0]
    batch_size = min(options["batch_size"], n)
    training = model.spec.training
    if distributed is not None:
        from .distributed_fit import distributed_fit

        return distributed_fit(model, x, y, distributed, epochs=epochs, batch_size=batch_size, schedule=schedule,
                               base_lr=base_lr, validation_data=validation_data, shuffle=shuffle,
                               seed=seed, verbose=options["verbose"], checkpoint=checkpoint,
                               initial_epoch=initial_epoch, callbacks=callbacks, augment=augment)
    batch_x = np.empty((batch_size,) + x.shape[1:], model.dtype)
    batch_y = np.empty((batch_size,) + y.shape[1:], y.dtype)
    with_accuracy = measures_accuracy(model)
    history = History()
    run = Run(model, history, fit_columns(model, validation_data))
    for callback in callbacks:
        callback.on_train_begin(run)
    progress = Progress(options["verbose"])

    for epoch in range(initial_epoch, epochs):
        model.hyper["lr"] = learning_rate(schedule, base_lr, epoch, epochs, training["step_size"],
                                          training["gamma"]) * run.lr_factor
        order = epoch_order(n, seed, epoch, shuffle)
        progress.start_epoch(epoch + 1, epochs, n)
        total_loss, hits, seen = 0.0, 0, 0
        start = time.perf_counter()
        for batch_index, first in enumerate(range(0, n, batch_size)):
            index = order[first:first + batch_size]
            count = index.shape[0]
            bx, by = batch_x[:count], batch_y[:count]
            gather_batch(x, index, bx)
            np.take(y, index, axis=0, out=by)
            if augment is not None:
                augment.apply(bx, seed, model.step_count)
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
            progress.batch(seen, total_loss / seen, hits / seen if with_accuracy else None)
            for callback in callbacks:
                callback.on_batch_end(run, batch_index, {"loss": loss, "size": count})
        elapsed = time.perf_counter() - start
        row = {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": hits / seen if with_accuracy else None,
               "lr": model.hyper["lr"], "seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9)}
        if validation_data is not None:
            row["val_loss"], row["val_accuracy"] = _mean_loss_and_accuracy(model, *validation_data, 1000)
        history.append(row)
        progress.end_epoch(history.rows[-1])
        if checkpoint:
            model.save(checkpoint, epoch=epoch + 1)
        for callback in callbacks:
            callback.on_epoch_end(run, epoch + 1, history.rows[-1])
        if run.stop:
            break
    for callback in callbacks:
        callback.on_train_end(run)
    return history


def fit_columns(model, validation_data) -> set[str]:
    """The History columns a fit fills (what callbacks may watch)."""
    accuracy = measures_accuracy(model)
    columns = {"epoch", "loss", "lr", "seconds", "images_per_second"} | ({"accuracy"} if accuracy else set())
    if validation_data is not None:
        columns |= {"val_loss"} | ({"val_accuracy"} if accuracy else set())
    return columns


def evaluate(model, x, y, batch_size: int = 1000) -> dict[str, float | None]:
    """Mean loss (inference mode) and accuracy over a dataset."""
    check_positive_int("evaluate batch_size", batch_size, MAX_BATCH)
    x, y = checked_arrays(model, x, y, "x")
    loss, accuracy = _mean_loss_and_accuracy(model, x, y, batch_size)
    return {"loss": loss, "accuracy": accuracy}


def predictions(model, x, batch_size: int = 1000) -> np.ndarray:
    """The network's outputs over a dataset, in batches (a memory-mapped x is read batch by batch)."""
    check_positive_int("batch_size", batch_size, MAX_BATCH)
    return np.concatenate([model.predict(x[first:first + batch_size]) for first in range(0, len(x), batch_size)])


def _mean_loss_and_accuracy(model, x, y, batch_size: int) -> tuple[float, float | None]:
    """Over arrays already checked (checked_arrays); a memory-mapped x is converted batch by batch."""
    with_accuracy = measures_accuracy(model)
    total_loss, hits = 0.0, 0
    for first in range(0, x.shape[0], batch_size):
        bx = np.ascontiguousarray(x[first:first + batch_size], dtype=model.dtype)
        by = y[first:first + batch_size]
        total_loss += model.loss(bx, by, training=False, checked=True) * bx.shape[0]
        if with_accuracy:
            hits += accuracy_hits(model, model.last_output(bx.shape[0]), by)
    n = x.shape[0]
    return total_loss / n, (hits / n if with_accuracy else None)

"""Everything `fit` and `evaluate` are given, checked before the first step.

A bad argument is a ValueError that names the argument and what is allowed; nothing is
replaced by a default unless it is None (then the spec's `training` setting, or the
optimizer's lr, applies). The data, the validation data included, is checked and converted
here too, so a mistake in it cannot surface after an epoch has changed the weights.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from .datasets.checks import data_problem

SCHEDULES = ("constant", "step", "cosine")
MAX_EPOCHS = 1 << 20
MAX_BATCH = (1 << 31) - 1  # batch sizes reach C as size_t; a C int bounds the loops that use them
MAX_SEED = (1 << 32) - 1  # seed * 1_000_003 + step must stay inside the C side's uint64_t
VERBOSITY = (0, 1, 2)
STREAM_CHUNK = 4096  # samples converted at a time when a memory-mapped array is checked


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(name: str, value, maximum: int) -> int:
    if not _is_int(value) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer from 1 to {maximum:,}, got {value!r}")
    return int(value)


def fit_options(model, epochs, batch_size, lr, schedule, seed, verbose, shuffle, initial_epoch,
                validation_split, checkpoint, validation_data) -> dict:
    """The checked arguments, None replaced by the spec's settings."""
    training = model.spec.training
    epochs = check_positive_int("epochs", training["epochs"] if epochs is None else epochs, MAX_EPOCHS)
    batch_size = check_positive_int("batch_size", training["batch_size"] if batch_size is None else batch_size,
                                    MAX_BATCH)
    lr = model.program.optimizer.lr if lr is None else lr
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, (int, float, np.integer, np.floating)) \
            or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    info = np.finfo(model.dtype)
    if not float(info.tiny) <= lr <= float(info.max):
        raise ValueError(f"lr = {lr:g} is {'0' if lr < float(info.tiny) else 'infinite'} in {info.dtype}, the model's "
                         f"dtype (it holds {info.tiny:g} to {info.max:g})")
    schedule = training["schedule"] if schedule is None else schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    seed = 0 if seed is None else seed
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**32 - 1 ({MAX_SEED:,}), got {seed!r}")
    if verbose not in VERBOSITY or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0 (silent), 1 (a bar on a terminal) or 2 (one line per epoch), "
                         f"got {verbose!r}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
    if not _is_int(initial_epoch) or not 0 <= initial_epoch <= epochs:
        raise ValueError(f"initial_epoch must be an integer from 0 to epochs ({epochs}), got {initial_epoch!r}")
    if validation_split is not None:
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float, np.floating)) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a file path or None, got {checkpoint!r}")
    return {"epochs": epochs, "batch_size": batch_size, "lr": float(lr), "schedule": schedule, "seed": int(seed),
            "verbose": int(verbose)}


def checked_arrays(model, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) checked against the model: x converted to its dtype, except a memory-mapped x,
    which stays on disk and is checked a chunk at a time (training then reads it by batches)."""
    problem = data_problem(model.input_shape, model.program.loss, x, y, what if what != "x" else "")
    if problem:
        raise ValueError(problem)
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        warnings.warn(f"{what} is uint8: its values are taken as they are, 0 to 255, not scaled; divide by "
                      "255 for [0, 1] (the cnncc loaders return float32 already scaled to [0, 1])", stacklevel=4)
    if isinstance(x, np.memmap):
        if x.dtype.kind not in "biuf" or x.ndim != len(model.input_shape) + 1:
            model.validated_inputs(x[:1])  # the Model's own message for dtype and shape
        if len(x) == 0:
            raise ValueError(f"{what} holds no samples")
        for first in range(0, len(x), STREAM_CHUNK):
            model.validated_inputs(x[first:first + STREAM_CHUNK])
    else:
        x = model.validated_inputs(x)
    return x, model.validated_targets(y, x.shape[0])


def training_arrays(model, x, y, validation_data, validation_split):
    """(x, y, validation_data or None), all checked. validation_split, as in Keras, holds out
    the last fraction of the samples as given (before any shuffling)."""
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        validation_data = checked_arrays(model, *validation_data, "validation_data")
    x, y = checked_arrays(model, x, y, "x")
    if validation_split:
        held_out = int(len(x) * validation_split)
        if held_out == 0 or held_out == len(x):
            raise ValueError(f"validation_split {validation_split} of {len(x)} samples leaves "
                             f"{held_out} for validation and {len(x) - held_out} for training; both need one")
        validation_data = (x[len(x) - held_out:], y[len(y) - held_out:])
        x, y = x[:len(x) - held_out], y[:len(y) - held_out]
    return x, y, validation_data


def gather_batch(x: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    """x[index] into out: a direct take for an array in the model's dtype, else (a memory map)
    a read of just those samples and a conversion."""
    if x.dtype == out.dtype and not isinstance(x, np.memmap):
        np.take(x, index, axis=0, out=out)
    else:
        out[...] = x[index]

"""Callbacks for `fit`: small classes whose hooks run at the end of each batch, each epoch
and the run.

Every hook gets the `Run` (the model, the History so far, and the two things a callback may
change: `stop` and the learning-rate factor). Arguments are checked when a callback is made;
a monitored column the run will not have (val_loss without validation data, accuracy for
mse) is refused in `on_train_begin`, before the first step.
"""
from __future__ import annotations

import math
from pathlib import Path

from .history import COLUMNS, History

MONITORED = tuple(column for column in COLUMNS if column not in ("epoch", "lr", "seconds", "images_per_second"))
MODES = ("auto", "min", "max")


class Run:
    """What callbacks see of a training run."""

    def __init__(self, model, history: History, columns: set[str], rank: int = 0, ranks: int = 1):
        self.model = model
        self.history = history
        self.columns = columns  # the columns this run fills
        self.stop = False  # set to end training after this epoch
        self.lr_factor = 1.0  # multiplies the schedule's learning rate from the next epoch on
        # distributed training: every rank runs every callback on the same History rows (rank 0's)
        # and keeps rank 0's stop and lr_factor; only rank 0 writes files
        self.rank, self.ranks = rank, ranks

    @property
    def writes_files(self) -> bool:
        return self.rank == 0

    def reduce_lr(self, factor: float, min_lr: float, current_lr: float) -> float:
        """Scale the learning rate by factor, not below min_lr; returns the new rate."""
        new_lr = max(current_lr * factor, min_lr)
        self.lr_factor *= new_lr / current_lr
        return new_lr


class Callback:
    """Override any of the hooks; each does nothing by default."""

    def on_train_begin(self, run: Run) -> None:
        pass

    def on_batch_end(self, run: Run, batch: int, logs: dict) -> None:
        """batch: 0-based within the epoch; logs: loss (of the batch, before the step), size."""

    def on_epoch_end(self, run: Run, epoch: int, logs: dict) -> None:
        """epoch: 1-based, as printed; logs: the History row just recorded."""

    def on_train_end(self, run: Run) -> None:
        pass


class LambdaCallback(Callback):
    """Hooks from plain functions: LambdaCallback(on_epoch_end=lambda run, epoch, logs: ...)."""

    def __init__(self, on_train_begin=None, on_batch_end=None, on_epoch_end=None, on_train_end=None):
        for name, function in (("on_train_begin", on_train_begin), ("on_batch_end", on_batch_end),
                               ("on_epoch_end", on_epoch_end), ("on_train_end", on_train_end)):
            if function is not None and not callable(function):
                raise ValueError(f"LambdaCallback {name} must be callable or None, got {function!r}")
            if function is not None:
                setattr(self, name, function)


class _Monitor:
    """Tracks the best value of one History column: what "improved" means for it."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float):
        if monitor not in MONITORED:
            raise ValueError(f"{owner} monitor must be one of {', '.join(MONITORED)}, got {monitor!r}")
        if mode not in MODES:
            raise ValueError(f"{owner} mode must be one of {', '.join(MODES)}, got {mode!r}")
        _check_number(owner, "min_delta", min_delta, 0.0)
        self.owner, self.monitor = owner, monitor
        self.maximise = mode == "max" or (mode == "auto" and "accuracy" in monitor)
        self.min_delta = float(min_delta)
        self.best: float | None = None

    def start(self, run: Run) -> None:
        if self.monitor not in run.columns:
            why = ("this run has no validation data (pass validation_data or validation_split)"
                   if self.monitor.startswith("val_") else "this loss has no accuracy")
            raise ValueError(f"{self.owner} monitors {self.monitor}, but {why}; "
                             f"this run records {', '.join(c for c in MONITORED if c in run.columns)}")
        self.best = None

    def improved(self, logs: dict) -> bool:
        """Whether this epoch's value beats the best so far by more than min_delta (then it is the best)."""
        value = logs[self.monitor]
        if self.best is None:
            better = True
        elif self.maximise:
            better = value > self.best + self.min_delta
        else:
            better = value < self.best - self.min_delta
        if better:
            self.best = value
        return better


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs;
    restore_best_weights puts back the parameters of the best epoch when training ends."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False):
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        _check_int("EarlyStopping", "patience", patience, 0)
        _check_bool("EarlyStopping", "restore_best_weights", restore_best_weights)
        self.patience, self.restore_best_weights = patience, restore_best_weights
        self.stopped_epoch: int | None = None  # the epoch after which training stopped, if it did
        self.best_epoch: int | None = None
        self._waited = 0
        self._best_params = None

    def on_train_begin(self, run: Run) -> None:
        self._monitor.start(run)
        self._waited, self.stopped_epoch, self.best_epoch, self._best_params = 0, None, None, None

    def on_epoch_end(self, run: Run, epoch: int, logs: dict) -> None:
        if self._monitor.improved(logs):
            self._waited, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self._best_params = {key: value.copy() for key, value in run.model.params.items()}
            return
        self._waited += 1
        if self._waited >= self.patience:
            run.stop, self.stopped_epoch = True, epoch

    def on_train_end(self, run: Run) -> None:
        if self._best_params is not None:
            for key, value in self._best_params.items():
                run.model.params[key][...] = value


class ModelCheckpoint(Callback):
    """Save the model (atomically, as Model.save) after each epoch, or only when `monitor`
    improved (save_best_only). `{epoch}` in the path is replaced by the epoch number."""

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto"):
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"ModelCheckpoint path must be a file path, got {path!r}")
        _check_bool("ModelCheckpoint", "save_best_only", save_best_only)
        self.path, self.save_best_only = str(path), save_best_only
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode, 0.0)
        self.saved: list[tuple[int, str]] = []  # (epoch, path) of every save

    def on_train_begin(self, run: Run) -> None:
        if self.save_best_only:
            self._monitor.start(run)

    def on_epoch_end(self, run: Run, epoch: int, logs: dict) -> None:
        if self.save_best_only and not self._monitor.improved(logs):
            return
        path = self.path.replace("{epoch}", str(epoch))
        if run.writes_files:
            run.model.save(path, epoch=epoch)
        self.saved.append((epoch, path))


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` (not below min_lr) when `monitor` has not
    improved by more than min_delta for `patience` epochs; the History's lr column shows it."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, min_lr: float = 0.0,
                 mode: str = "auto", min_delta: float = 1e-4):
        self._monitor = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        if not _is_number(factor) or not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be a number in (0, 1), got {factor!r}")
        _check_int("ReduceLROnPlateau", "patience", patience, 0)
        _check_number("ReduceLROnPlateau", "min_lr", min_lr, 0.0)
        self.factor, self.patience, self.min_lr = float(factor), patience, float(min_lr)
        self.reductions: list[tuple[int, float]] = []  # (epoch, new lr)
        self._waited = 0

    def on_train_begin(self, run: Run) -> None:
        self._monitor.start(run)
        self._waited = 0

    def on_epoch_end(self, run: Run, epoch: int, logs: dict) -> None:
        if self._monitor.improved(logs):
            self._waited = 0
            return
        self._waited += 1
        if self._waited >= self.patience and logs["lr"] > self.min_lr:
            self.reductions.append((epoch, run.reduce_lr(self.factor, self.min_lr, logs["lr"])))
            self._waited = 0


class CSVLogger(Callback):
    """Write the History to a CSV file after every epoch (atomically: a kill leaves the
    previous epoch's complete file); History.from_csv and `cnncc plot` read it."""

    def __init__(self, path):
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"CSVLogger path must be a file path, got {path!r}")
        self.path = Path(path)

    def on_epoch_end(self, run: Run, epoch: int, logs: dict) -> None:
        if run.writes_files:
            run.history.to_csv(self.path)


def check_callbacks(callbacks) -> tuple[Callback, ...]:
    if callbacks is None:
        return ()
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, Callback) for c in callbacks):
        raise ValueError("callbacks must be a list of cnncc.callbacks.Callback instances "
                         "(EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, CSVLogger, LambdaCallback, "
                         f"or a subclass), got {callbacks!r}")
    return tuple(callbacks)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(owner: str, name: str, value, lo: float) -> None:
    if not _is_number(value) or value < lo:
        raise ValueError(f"{owner} {name} must be a finite number >= {lo:g}, got {value!r}")


def _check_int(owner: str, name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{owner} {name} must be an integer >= {lo}, got {value!r}")


def _check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner} {name} must be True or False, got {value!r}")

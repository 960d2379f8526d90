"""fit's History, callbacks, validation_split, argument checks and progress output."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

import cnncc
from cnncc import data
from cnncc.callbacks import (Callback, CSVLogger, EarlyStopping, LambdaCallback, ModelCheckpoint,
                             ReduceLROnPlateau, Run)
from cnncc.history import COLUMNS, History
from cnncc.progress import Progress
from cnncc.train import TrainingError

SMALL = {
    "name": "cb_small",
    "input": {"channels": 1, "height": 10, "width": 10},
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": "softmax_cross_entropy",
    "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"batch_size": 16, "epochs": 2},
}


@pytest.fixture(scope="module")
def dataset():
    return data.synthetic(shape=(1, 10, 10), classes=3, n_train=240, n_test=60, seed=2)


@pytest.fixture()
def model(build_dir):
    return cnncc.compile(SMALL, build_dir=build_dir).init(0)


def _crafted_run(values, monitor="val_loss", callbacks=()):
    """Drive callbacks through a crafted sequence of epoch values, no model involved."""
    history = History()
    run = Run(None, history, set(COLUMNS) - {"accuracy", "val_accuracy"} | {monitor})
    for callback in callbacks:
        callback.on_train_begin(run)
    stopped = None
    for epoch, value in enumerate(values, 1):
        history.append({"epoch": epoch, "loss": 1.0, monitor: value, "lr": 0.1 * run.lr_factor})
        for callback in callbacks:
            callback.on_epoch_end(run, epoch, history.rows[-1])
        if run.stop:
            stopped = epoch
            break
    return run, stopped


def test_early_stopping_stops_at_the_right_epoch_on_a_crafted_history():
    # best at epoch 2; epochs 3 and 4 do not improve; patience 2 stops after epoch 4.
    _, stopped = _crafted_run([1.0, 0.8, 0.85, 0.9, 0.95, 0.5], callbacks=[EarlyStopping(patience=2)])
    assert stopped == 4
    # min_delta: 0.79 is not better than 0.8 by more than 0.05, so it does not reset the wait.
    _, stopped = _crafted_run([1.0, 0.8, 0.79, 0.78, 0.5], callbacks=[EarlyStopping(patience=2, min_delta=0.05)])
    assert stopped == 4
    # mode max (auto for accuracy): rising values never stop it.
    stopper = EarlyStopping(monitor="val_accuracy", patience=1)
    _, stopped = _crafted_run([0.1, 0.2, 0.3, 0.4], monitor="val_accuracy", callbacks=[stopper])
    assert stopped is None and stopper.best_epoch == 4
    _, stopped = _crafted_run([0.5, 0.4, 0.3], monitor="val_accuracy", callbacks=[EarlyStopping("val_accuracy")])
    assert stopped == 2  # patience 0: the first epoch without improvement


def test_reduce_lr_on_plateau_on_a_crafted_history():
    reducer = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=0.02)
    run, _ = _crafted_run([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], callbacks=[reducer])
    assert [epoch for epoch, _ in reducer.reductions] == [3, 5, 7]
    assert [lr for _, lr in reducer.reductions] == pytest.approx([0.05, 0.025, 0.02])  # floored at min_lr
    assert run.history["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_callback_arguments_are_checked():
    for make in (lambda: EarlyStopping(monitor="val_los"), lambda: EarlyStopping(patience=-1),
                 lambda: EarlyStopping(patience=1.5), lambda: EarlyStopping(mode="up"),
                 lambda: EarlyStopping(min_delta=float("nan")), lambda: EarlyStopping(restore_best_weights=1),
                 lambda: ReduceLROnPlateau(factor=1.0), lambda: ReduceLROnPlateau(factor=0),
                 lambda: ReduceLROnPlateau(min_lr=-1), lambda: ModelCheckpoint(""),
                 lambda: ModelCheckpoint(3), lambda: CSVLogger(None), lambda: LambdaCallback(on_epoch_end=3)):
        with pytest.raises(ValueError):
            make()


def test_history_csv_and_json_round_trip(tmp_path):
    history = History([{"epoch": 1, "loss": 0.5, "accuracy": 0.25, "lr": 0.01, "seconds": 1.5,
                        "images_per_second": 100.0},
                       {"epoch": 2, "loss": 1 / 3, "accuracy": 0.5, "lr": 0.001, "seconds": 1.25,
                        "images_per_second": 120.5}])
    history.to_csv(tmp_path / "h.csv")
    again = History.from_csv(tmp_path / "h.csv")
    assert again.rows == history.rows  # repr of floats: exact round trip, None stays None
    assert again["val_loss"] == [None, None] and "val_loss" not in again and "loss" in again
    history.to_json(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text())["epochs"] == history.rows
    (tmp_path / "bad.csv").write_text("epoch,loss\n1,abc\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: loss is 'abc'"):
        History.from_csv(tmp_path / "bad.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a training history"):
        History.from_csv(tmp_path / "other.csv")


def test_fit_returns_a_full_history(model, dataset):
    (x, y), (xt, yt) = dataset
    history = model.fit(x, y, epochs=2, verbose=0, validation_data=(xt, yt))
    assert isinstance(history, History) and len(history) == 2 and history.epochs == [1, 2]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"):
        assert all(isinstance(v, float) and math.isfinite(v) for v in history[column]), column
    assert history.last("val_loss") == pytest.approx(model.evaluate(xt, yt)["loss"])


def test_restore_best_weights_restores_the_exact_weights(model, dataset):
    (x, y), (xt, yt) = dataset
    snapshots = {}
    record = LambdaCallback(on_epoch_end=lambda run, epoch, logs: snapshots.__setitem__(
        epoch, {k: v.copy() for k, v in run.model.params.items()}))
    # A learning rate far too high makes the validation loss wander: the best epoch is not the last.
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=8, lr=0.3, verbose=0, validation_data=(xt, yt), callbacks=[stopper, record])
    best = stopper.best_epoch
    assert history["val_loss"][best - 1] == min(history["val_loss"])
    for key, value in model.params.items():
        assert np.array_equal(value, snapshots[best][key]), key
    if stopper.stopped_epoch is not None:
        assert len(history) == stopper.stopped_epoch == best + 2


def test_reduce_lr_is_visible_in_the_history(model, dataset):
    (x, y), _ = dataset
    # min_delta 10: no epoch after the first counts as an improvement.
    reducer = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    history = model.fit(x[:64], y[:64], epochs=4, lr=0.01, verbose=0, callbacks=[reducer])
    assert history["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_model_checkpoint_keeps_the_best(model, dataset, tmp_path, build_dir):
    (x, y), (xt, yt) = dataset
    path = tmp_path / "best.npz"
    snapshots = {}
    record = LambdaCallback(on_epoch_end=lambda run, epoch, logs: snapshots.__setitem__(
        epoch, {k: v.copy() for k, v in run.model.params.items()}))
    saver = ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    history = model.fit(x, y, epochs=5, lr=0.3, verbose=0, validation_data=(xt, yt), callbacks=[saver, record])
    best = int(np.argmin(history["val_loss"])) + 1
    improving = [e for e in history.epochs if history["val_loss"][e - 1] == min(history["val_loss"][:e])]
    assert [epoch for epoch, _ in saver.saved] == improving and saver.saved[-1][0] == best
    loaded = cnncc.compile(SMALL, build_dir=build_dir).load(path)
    assert loaded.loaded_epoch == best
    for key, value in loaded.params.items():
        assert np.array_equal(value, snapshots[best][key])
    every = ModelCheckpoint(tmp_path / "e{epoch}.npz")
    model.fit(x[:32], y[:32], epochs=2, verbose=0, callbacks=[every])
    assert (tmp_path / "e1.npz").is_file() and (tmp_path / "e2.npz").is_file()


def test_csv_logger_round_trips_the_history(model, dataset, tmp_path):
    (x, y), (xt, yt) = dataset
    path = tmp_path / "log" / "history.csv"
    history = model.fit(x[:96], y[:96], epochs=3, verbose=0, validation_data=(xt, yt), callbacks=[CSVLogger(path)])
    assert History.from_csv(path).rows == history.rows


def test_lambda_callback_sees_every_batch_and_the_end(model, dataset):
    (x, y), _ = dataset
    seen, ended = [], []
    hooks = LambdaCallback(on_batch_end=lambda run, batch, logs: seen.append((batch, logs["size"])),
                           on_train_end=lambda run: ended.append(len(run.history)))
    model.fit(x[:40], y[:40], epochs=2, batch_size=16, verbose=0, callbacks=hooks)
    assert seen == [(0, 16), (1, 16), (2, 8)] * 2 and ended == [2]

    class StopAfterOne(Callback):
        def on_epoch_end(self, run, epoch, logs):
            run.stop = True

    assert len(model.fit(x[:40], y[:40], epochs=5, verbose=0, callbacks=[StopAfterOne()])) == 1


def test_validation_split_holds_out_the_last_fraction(build_dir, dataset):
    (x, y), _ = dataset
    split = cnncc.compile(SMALL, build_dir=build_dir).init(1)
    history = split.fit(x, y, epochs=1, seed=3, verbose=0, validation_split=0.25)
    plain = cnncc.compile(SMALL, build_dir=build_dir).init(1)
    plain.fit(x[:180], y[:180], epochs=1, seed=3, verbose=0)
    for key in plain.params:  # the held-out quarter never reached a step
        assert np.array_equal(split.params[key], plain.params[key])
    assert history["val_loss"][0] == pytest.approx(plain.evaluate(x[180:], y[180:])["loss"])
    with pytest.raises(ValueError, match="not both"):
        split.fit(x, y, validation_split=0.2, validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match="both need one"):
        split.fit(x[:3], y[:3], validation_split=0.2, verbose=0)


@pytest.mark.parametrize("options, match", [
    ({"lr": float("nan")}, "lr must be"), ({"lr": float("inf")}, "lr must be"), ({"lr": 0}, "lr must be"),
    ({"lr": -1.0}, "lr must be"), ({"lr": "0.1"}, "lr must be"),
    ({"epochs": 0}, "epochs must be"), ({"epochs": -2}, "epochs must be"), ({"epochs": 1.5}, "epochs must be"),
    ({"epochs": True}, "epochs must be"), ({"batch_size": 0}, "batch_size must be"),
    ({"batch_size": -8}, "batch_size must be"), ({"batch_size": 2 ** 40}, "batch_size must be"),
    ({"seed": 2 ** 70}, r"seed must be an integer from 0 to 2\*\*32 - 1"), ({"seed": -1}, "seed must be"),
    ({"seed": 1.0}, "seed must be"), ({"verbose": 3}, "verbose must be"), ({"shuffle": "yes"}, "shuffle must be"),
    ({"schedule": "linear"}, "schedule must be"), ({"initial_epoch": -1}, "initial_epoch must be"),
    ({"initial_epoch": 5, "epochs": 2}, "initial_epoch must be"), ({"validation_split": 1.0}, "validation_split"),
    ({"validation_split": -0.1}, "validation_split"), ({"callbacks": [print]}, "callbacks must be"),
    ({"validation_data": (np.zeros((4, 1, 10, 10)), np.full(4, 7))}, r"labels must be in \[0, 3\)"),
    ({"validation_data": (np.zeros((4, 10, 10, 1)), np.zeros(4, int))}, "validation_data x .* channels-last"),
    ({"validation_data": np.zeros(3)}, "validation_data must be a pair"),
    ({"callbacks": [EarlyStopping()]}, "no validation data"), ({"augment": {"crop": 10}}, "smaller than"),
    ({"augment": {"spin": 1}}, "unknown augment"),
])
def test_fit_arguments_are_refused_before_the_first_step(model, dataset, tmp_path, options, match):
    (x, y), _ = dataset
    before = {k: v.copy() for k, v in model.params.items()}
    checkpoint = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError, match=match):
        model.fit(x[:32], y[:32], checkpoint=checkpoint, **{"verbose": 0, **options})
    assert model.step_count == 0 and not checkpoint.exists()
    for key, value in before.items():
        assert np.array_equal(model.params[key], value)


def test_defaults_apply_only_to_none(model, dataset):
    (x, y), _ = dataset
    history = model.fit(x[:32], y[:32], epochs=None, batch_size=None, lr=None, seed=None, verbose=0)
    assert len(history) == SMALL["training"]["epochs"] and history["lr"] == pytest.approx([0.01, 0.01])
    assert model.step_count == 2 * 2  # batch_size 16 from the spec: 2 steps an epoch
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            model.evaluate(x[:8], y[:8], batch_size=bad)


def test_data_mistakes_get_their_fix(model, dataset):
    (x, y), _ = dataset
    x, y = x[:8], y[:8]
    cases = [((x.transpose(0, 2, 3, 1), y), "channels-last .* x.transpose\\(0, 3, 1, 2\\)"),
             ((x[:, 0], y), "no channel axis"),
             ((x.reshape(8, -1), y), "flat samples .*x.reshape"),
             ((x, np.eye(3, dtype=np.float32)[y]), "one-hot.*argmax"),
             ((x, y[:, None]), "ravel"),
             ((x, y.astype(np.float32)), "astype\\(int\\)")]
    for (bx, by), match in cases:
        with pytest.raises(ValueError, match=match):
            model.fit(bx, by, verbose=0)
        with pytest.raises(ValueError, match=match):
            model.evaluate(bx, by)


def test_uint8_pixels_are_warned_about(model):
    x = np.full((4, 1, 10, 10), 200, np.uint8)
    with pytest.warns(UserWarning, match="uint8: its values are taken as they are, 0 to 255"):
        model.fit(x, np.zeros(4, int), epochs=1, verbose=0)


def test_memory_mapped_inputs_stream(model, dataset, tmp_path, build_dir):
    (x, y), (xt, yt) = dataset
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    in_memory = cnncc.compile(SMALL, build_dir=build_dir).init(0)
    a = model.fit(mapped, y, epochs=1, seed=5, verbose=0, validation_split=0.2)
    b = in_memory.fit(x, y, epochs=1, seed=5, verbose=0, validation_split=0.2)
    assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]  # bit for bit
    bad = np.lib.format.open_memmap(tmp_path / "bad.npy", mode="w+", dtype=np.float32, shape=x.shape)
    bad[...] = x
    bad[-1, 0, 0, 0] = np.nan
    bad.flush()
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.load(tmp_path / "bad.npy", mmap_mode="r"), y, verbose=0)


def test_progress_is_one_line_per_epoch_off_a_terminal(model, dataset, capsys):
    (x, y), (xt, yt) = dataset
    model.fit(x[:64], y[:64], epochs=3, verbose=1, validation_data=(xt, yt))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"epoch {i}/3 - loss ") for i, line in enumerate(lines, 1))
    assert all("val_loss" in line and "img/s" in line for line in lines)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_draws_a_bar():
    stream = _Terminal()  # tqdm is a dependency of cnncc: no skip
    progress = Progress(1, stream)
    progress.start_epoch(1, 2, 100)
    for done in range(10, 101, 10):
        progress.batch(done, 0.5, 0.75)
    progress.end_epoch({"loss": 0.5, "accuracy": 0.75, "val_loss": 0.4, "val_accuracy": 0.8, "lr": 0.1,
                        "seconds": 1.0, "images_per_second": 100.0})
    text = stream.getvalue()
    assert "epoch 1/2" in text and "100/100" in text and "loss=0.5000" in text and "acc=75.0%" in text
    assert "img/s" in text and "val_loss 0.4000" in text


# ---- random fit/evaluate arguments: a result or a ValueError, and a refusal changes nothing --------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                 st.text(max_size=3), st.just([1]))
_FIT_ARGUMENTS = {"epochs": st.one_of(_ANY, st.integers(1, 2)), "batch_size": st.one_of(_ANY, st.integers(1, 40)),
                  "lr": st.one_of(_ANY, st.floats(1e-4, 0.1)), "seed": st.one_of(_ANY, st.integers(0, 2 ** 32 - 1)),
                  "shuffle": _ANY, "verbose": st.one_of(_ANY, st.just(0)), "schedule": _ANY,
                  "initial_epoch": _ANY, "validation_split": st.one_of(_ANY, st.floats(0, 1))}


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=_FIT_ARGUMENTS), st.one_of(_ANY, st.integers(1, 50)))
def test_random_fit_and_evaluate_arguments(model, dataset, options, eval_batch):
    (x, y), _ = dataset
    options.setdefault("verbose", 0)
    before = {k: v.copy() for k, v in model.params.items()}
    steps = model.step_count
    try:
        history = model.fit(x[:24], y[:24], **options)
    except ValueError:
        assert model.step_count == steps
        assert all(np.array_equal(model.params[k], v) for k, v in before.items())
    except TrainingError:  # a valid but huge lr: the built-in stop on a non-finite loss
        assert options.get("lr", 0) > 0.1
    else:
        assert all(math.isfinite(loss) for loss in history["loss"])
    try:
        result = model.evaluate(x[:10], y[:10], batch_size=eval_batch)
    except ValueError:
        assert not (isinstance(eval_batch, int) and not isinstance(eval_batch, bool) and 1 <= eval_batch)
    else:
        assert math.isfinite(result["loss"])

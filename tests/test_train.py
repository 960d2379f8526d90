"""Training from Python and the command line: fit, evaluate, schedules, checkpoints, data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc import data
from cnncc.checkpoint import CheckpointError
from cnncc.train import TrainingError, epoch_order, learning_rate

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "name": "small",
    "input": {"channels": 1, "height": 12, "width": 12},
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 6, "kernel": 3, "activation": "relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "drop", "type": "dropout", "rate": 0.1},
        {"name": "out", "type": "dense", "units": 4},
    ],
    "loss": "softmax_cross_entropy",
    "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"batch_size": 32, "epochs": 2},
}


@pytest.fixture(scope="module")
def dataset():
    return data.synthetic(shape=(1, 12, 12), classes=4, n_train=1200, n_test=300, seed=1)


@pytest.fixture()
def model(build_dir):
    return cnncc.compile(SMALL, build_dir=build_dir).init(0)


def test_fit_learns_the_synthetic_set(model, dataset):
    (x, y), (xt, yt) = dataset
    history = model.fit(x, y, epochs=3, verbose=0, validation_data=(xt, yt))
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.95
    result = model.evaluate(xt, yt)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    assert all(rate > 0 for rate in history["images_per_second"])


def test_training_is_reproducible_bit_for_bit(build_dir, dataset):
    (x, y), _ = dataset
    weights = []
    for _ in range(2):
        m = cnncc.compile(SMALL, build_dir=build_dir).init(3)
        m.fit(x[:400], y[:400], epochs=1, seed=7, verbose=0)
        weights.append(m.flat_params.copy())
    assert np.array_equal(weights[0], weights[1])


def test_schedules():
    assert learning_rate("constant", 0.1, 5, 10) == 0.1
    assert learning_rate("step", 0.1, 0, 10, step_size=2, gamma=0.5) == 0.1
    assert learning_rate("step", 0.1, 3, 10, step_size=2, gamma=0.5) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 0, 10) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 5, 10) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        learning_rate("linear", 0.1, 0, 1)


def test_fit_uses_the_schedule(model, dataset):
    (x, y), _ = dataset
    history = model.fit(x[:64], y[:64], epochs=3, verbose=0, schedule="step", lr=0.01)
    assert history["lr"] == pytest.approx([0.01, 0.001, 0.0001])


def test_labels_are_checked_before_any_c_runs(model, dataset):
    (x, y), _ = dataset
    before = model.flat_params.copy()
    for bad in (y[:10].astype(np.float32), np.full(10, 4), np.full(10, -1), y[:9]):
        with pytest.raises(ValueError):
            model.fit(x[:10], bad, epochs=1, verbose=0)
    assert np.array_equal(model.flat_params, before)


def test_non_finite_loss_stops_with_epoch_and_batch(model, dataset):
    (x, y), _ = dataset
    model.params["out.bias"][0] = np.inf
    before = model.flat_params.copy()
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1"):
        model.fit(x[:64], y[:64], epochs=1, verbose=0)
    assert np.array_equal(model.flat_params, before, equal_nan=True)


def test_save_load_round_trip(model, dataset, tmp_path):
    (x, y), (xt, _) = dataset
    model.fit(x[:200], y[:200], epochs=1, verbose=0)
    path = tmp_path / "w.npz"
    model.save(path, epoch=1)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary left behind
    other = cnncc.compile(SMALL, build_dir=model.module.path.parent.parent).init(99)
    other.load(path)
    assert other.loaded_epoch == 1 and other.step_count == model.step_count
    assert np.array_equal(other.predict(xt), model.predict(xt))
    assert np.array_equal(other.flat_optimizer_state, model.flat_optimizer_state)


def _expect_rejected(model, path, match):
    before = model.flat_params.copy()
    with pytest.raises(CheckpointError, match=match):
        model.load(path)
    assert np.array_equal(model.flat_params, before)


def test_bad_weight_files_leave_the_model_unchanged(model, tmp_path, build_dir):
    good = tmp_path / "good.npz"
    model.save(good)
    raw = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    _expect_rejected(model, tmp_path / "truncated.npz", "corrupt or truncated")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    _expect_rejected(model, tmp_path / "garbage.npz", "corrupt or truncated")
    _expect_rejected(model, tmp_path / "missing.npz", "no such")

    arrays = dict(np.load(good))
    for name, change, match in [
        ("no_meta", lambda a: a.pop("__cnncc_meta__"), "no metadata"),
        ("missing_key", lambda a: a.pop("conv.weight"), "missing parameter 'conv.weight'"),
        ("wrong_shape", lambda a: a.__setitem__("out.bias", np.zeros(5, np.float32)), "out.bias"),
        ("nan", lambda a: a["conv.weight"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    ]:
        changed = {k: v.copy() for k, v in arrays.items()}
        change(changed)
        np.savez(tmp_path / f"{name}.npz", **changed)
        _expect_rejected(model, tmp_path / f"{name}.npz", match)

    # Another spec's layers (a renamed spec with the same layers loads: test_train_cli.py).
    other_spec = dict(SMALL, name="other", layers=[dict(SMALL["layers"][0], filters=5)] + SMALL["layers"][1:])
    other = cnncc.compile(other_spec, build_dir=build_dir)
    other.save(tmp_path / "other.npz")
    _expect_rejected(model, tmp_path / "other.npz", "saved from spec 'other'")


def test_checkpoint_each_epoch_and_resume(model, dataset, tmp_path, build_dir):
    (x, y), _ = dataset
    ckpt = tmp_path / "ckpt.npz"
    model.fit(x[:128], y[:128], epochs=2, verbose=0, checkpoint=ckpt)
    resumed = cnncc.compile(SMALL, build_dir=build_dir).load(ckpt)
    assert resumed.loaded_epoch == 2
    history = resumed.fit(x[:128], y[:128], epochs=3, verbose=0, initial_epoch=resumed.loaded_epoch)
    assert len(history["loss"]) == 1


def test_a_resumed_fit_trains_as_the_uninterrupted_one(dataset, tmp_path, build_dir):
    """Each epoch's shuffle is keyed on (seed, epoch) (train.epoch_order), the dropout masks and
    augmentation on the step count the checkpoint keeps: stopping after an epoch and resuming
    from its checkpoint gives the same weights, bit for bit."""
    (x, y), _ = dataset
    x, y = x[:200], y[:200]
    whole = cnncc.compile(SMALL, build_dir=build_dir).init(5)
    whole.fit(x, y, epochs=3, seed=11, batch_size=16, verbose=0)
    ckpt = tmp_path / "ckpt.npz"
    first = cnncc.compile(SMALL, build_dir=build_dir).init(5)
    first.fit(x, y, epochs=1, seed=11, batch_size=16, verbose=0, checkpoint=ckpt)
    resumed = cnncc.compile(SMALL, build_dir=build_dir).load(ckpt)
    resumed.fit(x, y, epochs=3, seed=11, batch_size=16, verbose=0, initial_epoch=resumed.loaded_epoch)
    assert resumed.step_count == whole.step_count
    assert np.array_equal(resumed.flat_params, whole.flat_params)
    assert np.array_equal(resumed.flat_optimizer_state, whole.flat_optimizer_state)


def test_epoch_orders_are_permutations_of_their_own():
    orders = [epoch_order(50, 7, epoch) for epoch in range(4)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4
    assert np.array_equal(epoch_order(50, 7, 2), orders[2])  # nothing but (seed, epoch) decides
    assert not np.array_equal(epoch_order(50, 8, 2), orders[2])
    assert np.array_equal(epoch_order(5, 7, 1, shuffle=False), np.arange(5))


def test_inference_only_spec_refuses_training(build_dir):
    spec = {k: v for k, v in SMALL.items() if k != "loss"}
    spec["name"] = "infer_only"
    m = cnncc.compile(spec, build_dir=build_dir)
    assert m.predict(np.zeros((2, 1, 12, 12))).shape == (2, 4)
    with pytest.raises(ValueError, match="inference only"):
        m.gradients(np.zeros((2, 1, 12, 12)), np.zeros(2, int))


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cnncc", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_train_on_synthetic_data(tmp_path, build_dir):
    spec = tmp_path / "small.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "weights.npz"
    result = _cli("train", str(spec), "--limit", "600", "--epochs", "2", "--out", str(out),
                  "--build-dir", str(build_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "output (HxWxC)" in result.stdout  # the shape report comes first
    assert "accuracy" in result.stdout and out.is_file()
    assert "Traceback" not in result.stderr


def test_cli_train_errors_are_clear(tmp_path, build_dir):
    result = _cli("train", str(ROOT / "specs" / "lenet5.yaml"), "--data", "mnist",
                  "--data-dir", str(tmp_path), "--build-dir", str(build_dir), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "MNIST" in result.stderr or "mnist" in result.stderr


def test_cli_gradcheck(build_dir, tmp_path):
    result = _cli("gradcheck", str(ROOT / "specs" / "signal1d.yaml"), "--build-dir", str(build_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout


MNIST_DIR = data.find_mnist_dir()


@pytest.mark.skipif(MNIST_DIR is None, reason="the real MNIST files are not in ../shared/data/mnist "
                                              "(set CNNCC_MNIST_DIR)")
def test_paper_network_learns_real_mnist(build_dir):
    (x, y), (xt, yt) = data.load_mnist(MNIST_DIR, limit=3000)
    m = cnncc.compile(ROOT / "specs" / "mnist_seed.yaml", build_dir=build_dir).init(0)
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert m.evaluate(xt[:1000], yt[:1000])["accuracy"] > 0.85

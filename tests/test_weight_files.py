"""Forged weight files: every field validated before anything changes (CheckpointError, one
sentence), values checked after conversion to the model's dtype, and save never writing
non-finite parameters over a good file."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnncc
from cnncc.checkpoint import META_KEY, STATE_KEY, CheckpointError

SPEC = {"name": "weight_files", "input": {"channels": 1, "length": 6},
        "layers": [{"type": "flatten"}, {"name": "out", "type": "dense", "units": 3}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}}
X = np.random.default_rng(0).normal(size=(8, 1, 6))
Y = np.arange(8) % 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = cnncc.compile(SPEC, build_dir=tmp_path_factory.mktemp("build"), cflags=("-O0",))
    model.fit(X, Y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path_factory.mktemp("weights") / "good.npz"
    model.save(path, epoch=2)
    return model, path, dict(np.load(path))


def _meta(arrays):
    return json.loads(arrays[META_KEY].tobytes())


def _with_raw_meta(arrays, text: str):
    return {**arrays, META_KEY: np.frombuffer(text.encode(), np.uint8)}


def _with_meta(arrays, **changes):
    return _with_raw_meta(arrays, json.dumps({**_meta(arrays), **changes}))


def _refused(model, tmp_path, arrays, match):
    path = tmp_path / "forged.npz"
    np.savez(path, **arrays)
    before = (model._params.copy(), model._optimizer_state.copy(), model.step_count, model.loaded_epoch)
    with pytest.raises(CheckpointError, match=match) as info:
        model.load(path)
    assert "\n" not in str(info.value)
    assert np.array_equal(model._params, before[0]) and np.array_equal(model._optimizer_state, before[1])
    assert (model.step_count, model.loaded_epoch) == before[2:]


FORGED_STEPS = ["abc", float("inf"), [1], 2**70, -5, 1.5, True, None, {"a": 1}]
FORGED_EPOCHS = ["x", 1.5, 1e30, -50, 2**40, [2], False]


@pytest.mark.parametrize("value", FORGED_STEPS, ids=repr)
def test_forged_steps_are_refused(trained, tmp_path, value):
    model, _, arrays = trained
    _refused(model, tmp_path, _with_meta(arrays, step=value), "'step' must be an integer|not valid JSON")


@pytest.mark.parametrize("value", FORGED_EPOCHS, ids=repr)
def test_forged_epochs_are_refused(trained, tmp_path, value):
    model, _, arrays = trained
    _refused(model, tmp_path, _with_meta(arrays, epoch=value), "'epoch' must be an integer")


@pytest.mark.parametrize("text, match", [
    ('{"format": "cnncc-weights-1", "step": Infinity}', "not valid JSON"),
    ('{"format": "cnncc-weights-1", "step": NaN}', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "corrupt metadata"),
    ('{"format": ' + "[" * 2000 + "]" * 2000 + "}", "unknown format|corrupt metadata"),
    ('{"format": "cnncc-weights-1", "extra": 1}', "unknown metadata field"),
    ('{"format": "cnncc-weights-1", "spec": ["x"]}', "'spec' must be a short string"),
    ('{"format": ["cnncc-weights-1"]}', "unknown format"),
])
def test_forged_metadata_is_refused(trained, tmp_path, text, match):
    model, _, arrays = trained
    _refused(model, tmp_path, _with_raw_meta(arrays, text), match)


@pytest.mark.parametrize("forged, match", [
    (np.array(["a"] * 3), "expected floats"),
    (np.zeros(3, dtype=[("a", "f4")]), "expected floats"),
    (np.full(3, 1e300), "too large for float32"),
    (np.full(3, np.longdouble(1e300)), "too large for float32"),
    (np.array([1, np.nan, 2]), "NaN or infinite"),
    (np.zeros(3, np.float16), None),  # a narrower float converts exactly: accepted
])
def test_parameter_values_are_checked_in_the_models_dtype(trained, tmp_path, forged, match):
    model, _, arrays = trained
    changed = {**arrays, "out.bias": forged}
    if match is None:
        path = tmp_path / "narrow.npz"
        np.savez(path, **changed)
        model.load(path)
        assert not model.params["out.bias"].any()
        return
    _refused(model, tmp_path, changed, match)


@pytest.mark.parametrize("make, match", [
    (lambda s: s.astype("U8"), "optimizer state is <U8"),
    (lambda s: np.zeros(s.shape, dtype=[("a", "f4")]), "optimizer state"),
    (lambda s: np.full(s.shape, 1e300), "optimizer state holds values too large"),
    (lambda s: np.full(s.shape, np.longdouble("1e4000")), "optimizer state"),
    (lambda s: s.astype(np.int64), "optimizer state is int64"),
])
def test_forged_optimizer_state_is_refused(trained, tmp_path, make, match):
    model, _, arrays = trained
    _refused(model, tmp_path, {**arrays, STATE_KEY: make(arrays[STATE_KEY])}, match)


def test_an_unexpected_array_is_refused(trained, tmp_path):
    model, _, arrays = trained
    _refused(model, tmp_path, {**arrays, "out.extra": np.zeros(3, np.float32)}, "unexpected array")


def test_save_refuses_non_finite_parameters_and_keeps_the_good_file(trained, tmp_path):
    model, good, _ = trained
    path = tmp_path / "checkpoint.npz"
    model.save(path, epoch=1)
    kept = path.read_bytes()
    saved = model._params.copy()
    try:
        model.params["out.bias"][0] = np.nan
        with pytest.raises(CheckpointError, match="NaN or infinite.*nothing was written"):
            model.save(path, epoch=2)
        assert path.read_bytes() == kept
        model.params["out.bias"][...] = 0
        model._optimizer_state[0] = np.inf
        with pytest.raises(CheckpointError, match="optimizer state"):
            model.save(path, epoch=2)
        assert path.read_bytes() == kept
    finally:
        model._params[...] = saved
        model._optimizer_state[0] = 0


@pytest.mark.parametrize("epoch", [-1, 1.5, "2", 2**40, True])
def test_save_refuses_a_bad_epoch(trained, tmp_path, epoch):
    model, _, _ = trained
    with pytest.raises(ValueError, match="epoch must be"):
        model.save(tmp_path / "w.npz", epoch=epoch)
    assert not (tmp_path / "w.npz").exists()

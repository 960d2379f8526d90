"""Augmentation: each transform against a direct computation, determinism, off in evaluation."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.augment import Augment
from cnncc.errors import SpecError


def _batch(n=6, shape=(2, 7, 9), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def _zero_shift(sample, dy, dx):
    """The sample moved by (dy, dx), zeros where nothing moved in: pad then crop, as written in the notes."""
    c, h, w = sample.shape
    p = max(abs(dy), abs(dx))
    padded = np.pad(sample, ((0, 0), (p, p), (p, p)))
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def _edge_shift(sample, dy, dx):
    c, h, w = sample.shape
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return sample[:, rows][:, :, cols]


def _offsets(seed, step, n, reach):
    """The offsets Augment draws first (same generator and order)."""
    rng = np.random.default_rng([seed, 0xA0, step])
    return rng.integers(-reach, reach + 1, (n, 2))


def test_crop_with_padding_is_a_zero_filled_shift():
    x = _batch()
    out = x.copy()
    Augment(crop=3).apply(out, seed=4, step=11)
    offsets = _offsets(4, 11, len(x), 3)
    for sample, moved, (dy, dx) in zip(x, out, offsets):
        assert np.array_equal(moved, _zero_shift(sample, dy, dx))
    assert (offsets != 0).any()


def test_shift_repeats_the_edge():
    x = _batch()
    out = x.copy()
    Augment(shift=2).apply(out, seed=1, step=0)
    for sample, moved, (dy, dx) in zip(x, out, _offsets(1, 0, len(x), 2)):
        assert np.array_equal(moved, _edge_shift(sample, dy, dx))


def test_flip_and_noise():
    x = _batch(n=64)
    out = x.copy()
    Augment(flip=True).apply(out, seed=0, step=0)
    flipped = [np.array_equal(o, s[..., ::-1]) for s, o in zip(x, out)]
    kept = [np.array_equal(o, s) for s, o in zip(x, out)]
    assert all(f or k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48
    out = np.zeros((64, 3, 16, 16), np.float32)
    Augment(noise=0.5).apply(out, seed=0, step=0)
    assert out.std() == pytest.approx(0.5, rel=0.03) and abs(out.mean()) < 0.01


def test_signals_shift_along_their_one_axis():
    x = np.random.default_rng(0).random((4, 2, 20)).astype(np.float32)
    out = x.copy()
    Augment(crop=3, flip=True).apply(out, seed=2, step=5)
    assert out.shape == x.shape and not np.array_equal(out, x)


def test_deterministic_for_a_seed_and_step():
    a, b, c = _batch(), _batch(), _batch()
    augment = Augment(crop=2, flip=True, shift=1, noise=0.1)
    augment.apply(a, seed=9, step=3)
    augment.apply(b, seed=9, step=3)
    augment.apply(c, seed=9, step=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_arguments_are_checked():
    for bad in ({"crop": -1}, {"crop": 1.5}, {"flip": 1}, {"noise": float("nan")}, {"noise": -0.1}):
        with pytest.raises(ValueError):
            Augment(**bad)
    with pytest.raises(ValueError, match="smaller than"):
        Augment(crop=7).check_shape((2, 7, 9))
    assert Augment.from_options({}) is None and Augment.from_options(False) is None


SPEC = """name: aug_spec
input: {channels: 1, height: 10, width: 10}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, activation: relu}
  - {type: flatten}
  - {name: out, type: dense, units: 3}
loss: softmax_cross_entropy
optimizer: {type: adam, lr: 0.01}
training:
  batch_size: 16
  augment: {crop: 2, flip: true}
"""


def test_spec_section_is_validated_with_locations():
    spec = cnncc.load_spec(SPEC)
    assert spec.training["augment"] == {"crop": 2, "flip": True, "shift": 0, "noise": 0.0}
    assert cnncc.load_spec(SPEC.replace("  augment: {crop: 2, flip: true}\n", "")).training["augment"] is None
    prefix = len("  augment: ")  # the mapping starts at column prefix + 1 of line 11
    for bad, column, match in [("{crop: 2, flp: true}", prefix + 11, "did you mean 'flip'"),
                               ("{crop: 10, flip: true}", prefix + 8, "smaller than the input's smallest side"),
                               ("{crop: -2}", prefix + 8, "at least 0"), ("[crop]", prefix + 1, "must be a mapping")]:
        with pytest.raises(SpecError) as caught:
            cnncc.load_spec(SPEC.replace("{crop: 2, flip: true}", bad))
        assert f"<string>:11:{column}:" in caught.value.format() and match in caught.value.format()


def test_fit_augments_training_batches_only(build_dir):
    from cnncc import data

    (x, y), (xt, yt) = data.synthetic(shape=(1, 10, 10), classes=3, n_train=96, n_test=30, seed=0)
    runs = []
    for augment in (None, None, False):
        model = cnncc.compile(SPEC, build_dir=build_dir).init(0)
        model.fit(x, y, epochs=1, seed=1, verbose=0, augment=augment)
        runs.append({k: v.copy() for k, v in model.params.items()})
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])  # the spec's augment, reproducibly
    assert not all(np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])  # augment=False: none
    before = x.copy()
    model.evaluate(xt, yt)
    first = model.predict(xt)
    assert np.array_equal(first, model.predict(xt)) and np.array_equal(x, before)  # data untouched

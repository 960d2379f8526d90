"""The Model/C boundary: every integer that crosses into C has a documented range checked in
Python (a ValueError saying what is allowed), `params` cannot be detached from the buffer C
reads, and a step whose update is non-finite is undone (the weights are those of the last
good step)."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.errors import SpecError
from cnncc.runtime import MAX_BATCH, MAX_SEED, MAX_THREADS
from cnncc.train import TrainingError

SPEC = {"name": "boundaries", "input": {"channels": 1, "height": 6, "width": 6},
        "layers": [{"name": "conv", "type": "conv2d", "filters": 2, "kernel": 3, "activation": "relu"},
                   {"type": "flatten"}, {"name": "drop", "type": "dropout", "rate": 0.3},
                   {"name": "out", "type": "dense", "units": 3}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.1}}
X = np.random.default_rng(0).normal(size=(4, 1, 6, 6))
Y = np.array([0, 1, 2, 0])
BAD_THREADS = [0, -1, MAX_THREADS + 1, 10**6, 2**31, 2**70, True, 1.5, "2", None]
BAD_SEEDS = [-1, MAX_SEED + 1, 2**70, 1.5, "1", True]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return cnncc.compile(SPEC, build_dir=tmp_path_factory.mktemp("build"), cflags=("-O0",))


@pytest.fixture(scope="module")
def threaded(tmp_path_factory):
    return cnncc.compile(SPEC, build_dir=tmp_path_factory.mktemp("build"), cflags=("-O0",), threads=2)


@pytest.mark.parametrize("threads", BAD_THREADS, ids=repr)
def test_thread_counts_outside_the_range_are_refused(threaded, threads):
    before = threaded.set_threads(2)
    with pytest.raises(ValueError, match=rf"threads must be a positive integer in \[1, {MAX_THREADS}\]"):
        threaded.set_threads(threads)
    assert threaded.set_threads(2) == before
    threaded.predict(X)  # and the model still runs


@pytest.mark.parametrize("threads", [0, MAX_THREADS + 1, 2**31, True])
def test_compile_refuses_the_same_thread_counts(threads):
    with pytest.raises(ValueError, match="threads must be a positive integer in"):
        cnncc.compile(SPEC, threads=threads)


def test_thread_counts_inside_the_range_work(threaded, model):
    reference = model.predict(X)
    for threads in (1, 2, 8):
        threaded.set_threads(threads)
        assert np.array_equal(threaded.predict(X), reference)
    assert model.set_threads(3) == 1  # a single-threaded build ignores the count


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_seeds_outside_uint64_are_refused_before_any_change(model, seed):
    before = model._params.copy()
    for call in (lambda: model.train_step(X, Y, seed=seed), lambda: model.loss(X, Y, seed=seed),
                 lambda: model.gradients(X, Y, seed=seed), lambda: model.init(seed)):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, "):
            call()
    assert np.array_equal(model._params, before)


def test_the_extreme_seeds_work(model):
    for seed in (0, MAX_SEED):
        assert np.isfinite(model.loss(X, Y, seed=seed))
        assert np.isfinite(model.train_step(X, Y, seed=seed))
    model.init(0)


@pytest.mark.parametrize("batch_size", [0, -3, MAX_BATCH + 1, 1.5, True, "4"], ids=repr)
def test_forward_batch_sizes_outside_the_range_are_refused(model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer in"):
        model.forward(X, batch_size=batch_size)


def test_assigning_a_parameter_copies_into_the_buffer(model):
    weight = model.params["out.weight"]
    new = np.full(weight.shape, 0.25)
    model.params["out.weight"] = new
    assert model.params["out.weight"] is weight  # still the view C reads
    assert np.all(model._params[-weight.size - 3:-3] == np.float32(0.25))
    view_before = model.predict(X)
    model.params["out.weight"][...] = 0.5  # assigning into a view stays allowed
    assert not np.array_equal(model.predict(X), view_before)
    for bad, match in [(np.zeros(3), "shape"), (np.full(weight.shape, np.nan), "NaN"),
                       (np.full(weight.shape, 1e300), "NaN or infinite values in float32"),
                       (np.full(weight.shape, "a"), "real array")]:
        with pytest.raises(ValueError, match=match):
            model.params["out.weight"] = bad
    with pytest.raises(KeyError, match="no parameter named"):
        model.params["out.extra"] = new
    with pytest.raises(TypeError):
        del model.params["out.weight"]
    model.init(0)


def test_a_finite_loss_with_a_non_finite_update_is_undone(model):
    model.init(0)
    model.train_step(X, Y)
    # Output biases of 3e38, all alike: softmax cancels them, so the loss stays finite, while the
    # weight-decay term of the update (lr 10 x decay 1 x 3e38) overflows float32. (An lr the
    # model's dtype cannot hold is refused before any C runs: test_faults.py.)
    model.params["out.bias"] = np.full(3, 3e38)
    before, steps = model._params.copy(), model.step_count
    saved = dict(model.hyper)
    model.hyper.update(lr=10.0, weight_decay=1.0)
    try:
        with pytest.raises(TrainingError, match="the weights are those before it"):
            model.train_step(X, Y)
    finally:
        model.hyper.update(saved)
    assert np.array_equal(model._params, before) and model.step_count == steps
    model.params["out.bias"] = np.zeros(3)
    assert np.isfinite(model.train_step(X, Y))


def test_fit_stops_on_a_non_finite_update_with_the_last_good_weights(tmp_path):
    """Zero inputs keep the loss finite whatever conv.weight holds; the decay term of the update
    (lr 10 x weight_decay 1 x 3e38) then overflows float32."""
    spec = {**SPEC, "name": "boundaries_decay", "optimizer": {"type": "sgd", "lr": 10.0, "weight_decay": 1.0}}
    model = cnncc.compile(spec, build_dir=tmp_path, cflags=("-O0",))
    model.params["conv.weight"] = np.full(model.params["conv.weight"].shape, 3e38)
    before = model._params.copy()
    checkpoint = tmp_path / "checkpoint.npz"
    with pytest.raises(TrainingError, match="not taken"):
        model.fit(np.zeros_like(X), Y, epochs=1, batch_size=4, verbose=0, checkpoint=checkpoint)
    assert np.array_equal(model._params, before) and model.step_count == 0
    assert not checkpoint.exists()


@pytest.mark.parametrize("optimizer, match", [
    ({"type": "adam", "eps": 1e-50}, "eps 1e-50 is 0 in float32"),
    ({"type": "adam", "eps": 1e-40}, "eps 1e-40 is subnormal in float32"),
    ({"type": "adam", "beta2": 0.999999999}, "beta2 0.999999999 rounds to 1 in float32"),
    ({"type": "sgd", "momentum": 0.99999999}, "momentum .* rounds to 1"),
    ({"type": "sgd", "lr": 1e-45}, "lr 1e-45 is"),
    ({"type": "adam", "weight_decay": 1e-39}, "weight_decay"),
])
def test_hyper_parameters_that_vanish_in_float32_are_refused(optimizer, match):
    with pytest.raises(SpecError, match=match):
        cnncc.load_spec({**SPEC, "optimizer": optimizer})
    cnncc.load_spec({**SPEC, "dtype": "float64", "optimizer": optimizer})  # representable there


def test_the_located_error_points_at_the_value():
    text = ("name: t\ninput: {channels: 1, length: 4}\nlayers:\n  - {type: flatten}\n"
            "  - {type: dense, units: 2}\nloss: mse\noptimizer:\n  type: adam\n  eps: 1.0e-50\n")
    with pytest.raises(SpecError) as info:
        cnncc.load_spec(text)
    assert "9:8" in str(info.value) and "float32" in str(info.value)


@pytest.mark.parametrize("optimizer", [{"type": "sgd", "lr": 10.0, "weight_decay": 1.0},
                                       {"type": "sgd", "lr": 10.0, "weight_decay": 1.0, "momentum": 0.9,
                                        "nesterov": True},
                                       {"type": "adam", "lr": 10.0, "weight_decay": 1.0}],
                         ids=["sgd", "nesterov", "adam"])
def test_the_c_step_refuses_a_non_finite_update_and_changes_nothing(tmp_path, optimizer):
    """NAME_step checks every update before writing any: an overflowing one leaves the weights and
    the optimizer state as they were (train_step and apply_step both go through it)."""
    spec = {**SPEC, "name": f"boundaries_{optimizer['type']}", "optimizer": optimizer}
    model = cnncc.compile(spec, build_dir=tmp_path, cflags=("-O0",))
    model.train_step(X, Y)  # some optimizer state to keep
    model.params["out.bias"] = np.full(3, 3e38)  # the loss stays finite; the decay term overflows
    params, state, steps = model.flat_params.copy(), model.flat_optimizer_state.copy(), model.step_count
    with pytest.raises(TrainingError, match="it was not taken"):
        model.train_step(X, Y)
    model.compute_gradients(X, Y)
    with pytest.raises(TrainingError, match="it was not taken"):
        model.apply_step()
    assert np.array_equal(model.flat_params, params) and np.array_equal(model.flat_optimizer_state, state)
    assert model.step_count == steps
    model.params["out.bias"] = np.zeros(3)
    assert np.isfinite(model.train_step(X, Y)) and model.step_count == steps + 1


def test_a_batch_that_overflows_the_running_statistics_is_not_stepped_on(tmp_path):
    """Inputs of 1e20 make batchnorm's batch variance infinite in float32 while its output, and so
    the loss, stays finite: the C step stops and the running statistics are put back."""
    spec = {"name": "boundaries_bn", "input": {"channels": 1, "height": 4, "width": 4},
            "layers": [{"name": "conv", "type": "conv2d", "filters": 2, "kernel": 3},
                       {"name": "bn", "type": "batchnorm"}, {"type": "flatten"},
                       {"name": "out", "type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.1}}
    model = cnncc.compile(spec, build_dir=tmp_path, cflags=("-O0",))
    x = np.random.default_rng(1).normal(size=(4, 1, 4, 4))
    model.train_step(x, Y)
    params, steps = model.flat_params.copy(), model.step_count
    with pytest.raises(TrainingError, match="running statistics"):
        model.train_step(x * 1e20, Y)
    assert np.array_equal(model.flat_params, params) and model.step_count == steps

"""Whole networks through the compiled C: finite-difference gradient checks, the optimizers
against tests/reference.py, the compile cache, -Werror builds of every template variant,
input checking, parameter views and initialisation, and batch independence."""
from __future__ import annotations

import copy
import math
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

import cnncc
import cnncc.build
import reference as ref
from build_flags import BASELINE_WERROR
from reference import rel_err

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
# Warnings as errors at the level each build compiles fastest: one-thread builds at -O1 (ResNet-8
# 4.6 s against 6.0 s at -O0; -O1's flow analysis also finds -Wmaybe-uninitialized, which -O0
# cannot), OpenMP builds at -O0 (about half their -O1 time). The example specs are the exception:
# they build at the training digests' -O2 (build_flags.BASELINE_WERROR), whose build test_digests
# compiles anyway. Code that must not lean on the optimiser is built at -O0 by test_emit and by
# test_layers' input-reading groups.
WERROR = ("-O1", "-Wall", "-Wextra", "-Werror")
WERROR_THREADED = ("-O0", "-Wall", "-Wextra", "-Werror")
TOL_FD = 1e-6
TOL_OPT = 1e-12


def _spec(name, inputs, layers, loss="softmax_cross_entropy", dtype="float64", optimizer=None):
    spec = {"name": name, "input": inputs, "dtype": dtype, "layers": layers}
    if loss:
        spec["loss"] = loss
    if optimizer:
        spec["optimizer"] = optimizer
    return spec


# ---------------------------------------------------------------------------------------
# the networks
# ---------------------------------------------------------------------------------------

NETS = {
    "lenet5": _spec("net_lenet5", {"channels": 2, "height": 16, "width": 16}, [
        {"name": "conv1", "type": "conv2d", "filters": 4, "kernel": 5, "activation": "relu"},
        {"name": "pool1", "type": "maxpool2d", "kernel": 2},
        {"name": "conv2", "type": "conv2d", "filters": 6, "kernel": 3, "activation": "relu"},
        {"name": "pool2", "type": "maxpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "fc3", "type": "dense", "units": 12, "activation": "relu"},
        {"name": "fc4", "type": "dense", "units": 8, "activation": "relu"},
        {"name": "fc5", "type": "dense", "units": 5},
    ]),
    "mnist_seed": _spec("net_mnist_seed", {"channels": 1, "height": 12, "width": 12}, [
        {"name": "conv1", "type": "conv2d", "filters": 4, "kernel": 5, "activation": "relu"},
        {"name": "conv2", "type": "conv2d", "filters": 4, "kernel": 5, "activation": "relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2, "stride": 2},
        {"type": "flatten"},
        {"name": "fc1", "type": "dense", "units": 16, "activation": "relu"},
        {"name": "fc2", "type": "dense", "units": 10},
    ], optimizer={"type": "adam", "lr": 0.01, "beta1": 0.95, "beta2": 0.99}),
    "resnet_small": _spec("net_resnet_small", {"channels": 3, "height": 8, "width": 8}, [
        {"name": "stem", "type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "bias": False},
        {"name": "stem_bn", "type": "batchnorm"},
        {"name": "stem_relu", "type": "relu"},
        {"name": "b1_conv1", "type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "bias": False},
        {"name": "b1_bn1", "type": "batchnorm", "momentum": 0.2},
        {"name": "b1_relu", "type": "relu"},
        {"name": "b1_conv2", "type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "bias": False},
        {"name": "b1_bn2", "type": "batchnorm"},
        {"name": "b1_add", "type": "add", "inputs": ["b1_bn2", "stem_relu"]},
        {"name": "b1_out", "type": "relu"},
        {"name": "down", "type": "conv2d", "filters": 6, "kernel": 3, "stride": 2, "padding": "same",
         "activation": "relu"},
        {"name": "depthwise", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1, "groups": 6},
        {"name": "pointwise", "type": "conv2d", "filters": 6, "kernel": 1, "activation": "relu"},
        {"name": "merged", "type": "concat", "inputs": ["down", "pointwise"]},
        {"name": "gap", "type": "global_avgpool"},
        {"name": "drop", "type": "dropout", "rate": 0.25},
        {"name": "classifier", "type": "dense", "units": 5},
    ], optimizer={"type": "adam", "lr": 0.002, "weight_decay": 0.0001}),
    "signal1d": _spec("net_signal1d", {"channels": 2, "length": 24}, [
        {"name": "edges", "type": "conv1d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
        {"name": "pool1", "type": "maxpool1d", "kernel": 2},
        {"name": "bn", "type": "batchnorm"},
        {"name": "conv2", "type": "conv1d", "filters": 6, "kernel": 5, "stride": 2, "dilation": 1,
         "activation": "tanh"},
        {"name": "pool2", "type": "avgpool1d", "kernel": 3, "stride": 1, "padding": 1},
        {"name": "gap", "type": "global_avgpool"},
        {"name": "out", "type": "dense", "units": 4},
    ], optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "mse": _spec("net_mse", {"channels": 2, "height": 7, "width": 6}, [
        {"name": "conv", "type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "activation": "tanh"},
        {"name": "pool", "type": "avgpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "hidden", "type": "dense", "units": 6, "activation": "leaky_relu"},
        {"name": "out", "type": "dense", "units": 3},
    ], loss="mse"),
    "bce": _spec("net_bce", {"channels": 2, "height": 6, "width": 6}, [
        {"name": "conv", "type": "conv2d", "filters": 3, "kernel": 3, "activation": "leaky_relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3, "activation": "sigmoid"},
    ], loss="binary_cross_entropy"),
    "bce_sigmoid_layer": _spec("net_bce_layer", {"channels": 3, "length": 10}, [
        {"name": "conv", "type": "conv1d", "filters": 2, "kernel": 3, "activation": "sigmoid"},
        {"name": "softmaxed", "type": "softmax"},
        {"name": "conv_out", "type": "conv1d", "filters": 2, "kernel": 2, "stride": 2},
        {"name": "prob", "type": "sigmoid"},
    ], loss="binary_cross_entropy"),
}


def _problem(m, n=4, seed=0):
    """Random inputs and targets (labels for softmax cross-entropy) for a model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(m.input_shape))
    out = (n,) + tuple(m.output_shape)
    kind = m.program.loss.kind
    if kind == "softmax_cross_entropy":
        return x, rng.integers(0, m.output_shape[0], n)
    if kind == "mse":
        return x, rng.standard_normal(out)
    return x, rng.uniform(0, 1, out)


@pytest.fixture(scope="module")
def nets(compile_many):
    """Every network, and its `_dx` variant (see with_identity_input)."""
    specs = {**NETS, **{k + "_dx": with_identity_input(v) for k, v in NETS.items()}}
    return dict(zip(specs, compile_many(list(specs.values()))))


def _sampled_fd(f, array, indices, h=1e-6):
    """Central differences of f() with respect to array[index] for the given indices."""
    out = []
    for index in indices:
        old = array[index]
        array[index] = old + h
        plus = f()
        array[index] = old - h
        minus = f()
        array[index] = old
        out.append((plus - minus) / (2 * h))
    return np.array(out)


def _sample(shape, rng, k):
    flat = rng.choice(math.prod(shape), size=min(k, math.prod(shape)), replace=False)
    return [tuple(int(i) for i in np.unravel_index(j, shape)) for j in flat]


@pytest.mark.parametrize("name", list(NETS))
def test_whole_network_gradients_match_finite_differences(name, nets):
    m = nets[name]
    m.init(1)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for key, view in m.params.items():  # non-trivial biases and batchnorm scales
        if key.endswith(("bias", "beta")):
            view[...] = 0.1 * rng.standard_normal(view.shape)
        elif key.endswith("gamma"):
            view[...] = 1 + 0.2 * rng.standard_normal(view.shape)
    x, y = _problem(m, seed=3)
    seed = 7  # fixes the dropout mask

    def f():
        return m.loss(x, y, training=True, seed=seed)

    frozen = {k: v.copy() for k, v in m.params.items() if k.endswith(("running_mean", "running_var"))}
    loss, grads = m.gradients(x, y, seed=seed)
    assert math.isfinite(loss) and loss == pytest.approx(f(), rel=1e-14)
    assert set(grads) == {p.key for p in m.program.params if p.trainable}
    for key, grad in grads.items():
        assert np.abs(grad).max() > 0, f"{key}: an all-zero gradient checks nothing"
        indices = _sample(grad.shape, rng, 6)
        numeric = _sampled_fd(f, m.params[key], indices)
        analytic = np.array([grad[i] for i in indices])
        err = np.abs(numeric - analytic).max() / np.abs(grad).max()
        assert err <= TOL_FD, f"{key}: finite differences {numeric} vs backward {analytic} (error {err:.3g})"
    for key, value in frozen.items():
        m.params[key][...] = value


def with_identity_input(spec):
    """The same network behind an identity layer (leaky_relu with slope 1), so that the first
    layer reads an activation and the backward pass stores dL/d(network input) for it."""
    spec = copy.deepcopy(spec)
    spec["name"] += "_dx"
    for layer in spec["layers"]:
        if "inputs" in layer:
            layer["inputs"] = ["identity_in" if i == "input" else i for i in layer["inputs"]]
    spec["layers"].insert(0, {"name": "identity_in", "type": "leaky_relu", "alpha": 1.0})
    return spec


@pytest.mark.parametrize("name", list(NETS))
def test_whole_network_input_gradient_matches_finite_differences(name, nets):
    m = nets[name + "_dx"].init(2)
    x, y = _problem(m, seed=4)
    seed = 5

    def f():
        return m.loss(x, y, training=True, seed=seed)

    m.gradients(x, y, seed=seed)
    dx = m.activation("identity_in", x.shape[0], grad=True).copy()
    assert np.abs(dx).max() > 0
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    indices = _sample(x.shape, rng, 16)
    numeric = _sampled_fd(f, x, indices)
    analytic = np.array([dx[i] for i in indices])
    err = np.abs(numeric - analytic).max() / np.abs(dx).max()
    assert err <= TOL_FD, f"dL/dx: finite differences {numeric} vs backward {analytic} (error {err:.3g})"


def test_gradients_behind_a_pooled_backward_are_refused_not_stale(nets):
    """mnist_seed's conv2 -> relu -> pool backward skips the gradients of conv2 and its relu
    (ir.PooledBackward): asking for them is an error, while every other gradient is there."""
    m = nets["mnist_seed"].init(3)
    x, y = _problem(m, seed=6)
    m.gradients(x, y)
    assert [op.name for op in m.program.ops if op.pooled] == ["conv2"]
    with pytest.raises(ValueError, match="'conv2' is not materialised"):
        m.activation("conv2", x.shape[0], grad=True)
    for layer in ("conv1", "pool", "fc1"):
        assert np.abs(m.activation(layer, x.shape[0], grad=True)).max() > 0, layer


# Two layers of one kind read the same tensor `pre`: the later one's backward runs first and
# writes pre's gradient with `=` (KernelPlan.initialised_grads, nothing zeroes it), the earlier
# one adds to it. Each kernel's initialising form is what tests/test_layers.py checks (there
# every layer is the only writer of its input's gradient); these check the adding form of the
# same kinds, and that the two together give finite differences' gradient.
_BRANCHES = {
    "batchnorm": ({"type": "batchnorm"}, {"type": "batchnorm", "momentum": 0.3}),
    "activation": ({"type": "tanh"}, {"type": "leaky_relu", "alpha": 0.2}),
    "softmax": ({"type": "softmax"}, {"type": "sigmoid"}),
    "dropout": ({"type": "dropout", "rate": 0.3}, {"type": "dropout", "rate": 0.5}),
    "avgpool2d": ({"type": "avgpool2d", "kernel": 3, "stride": 1, "padding": 1},
                  {"type": "avgpool2d", "kernel": 2, "stride": 1, "padding": "same"}),
    "conv_winograd": ({"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same"},
                      {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "activation": "relu"}),
    "conv_strided": ({"type": "conv2d", "filters": 16, "kernel": 3, "stride": 2, "padding": "same"},
                     {"type": "conv2d", "filters": 16, "kernel": 1, "stride": 2, "padding": "same"}),
    # output planes wide enough for input gradients by phases (test_layers.VARIANT_PHASED): the 1x1's
    # leaves three of its four phases at zero, writing first
    "conv_strided_phases": ({"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
                            {"type": "conv2d", "filters": 4, "kernel": 1, "stride": 2, "padding": "same"}),
    "conv_depthwise": ({"type": "conv2d", "filters": 16, "kernel": 3, "padding": 1, "groups": 16},
                       {"type": "conv2d", "filters": 16, "kernel": 3, "padding": 1, "groups": 16,
                        "activation": "relu"}),
    "global_avgpool": ({"type": "global_avgpool"}, {"type": "global_avgpool"}),
}


def _two_writers_spec(kind):
    first, second = _BRANCHES[kind]
    layers = [{"name": "pre", "type": "leaky_relu", "alpha": 1.0},
              {"name": "a", "inputs": ["pre"], **first}, {"name": "b", "inputs": ["pre"], **second},
              {"name": "merged", "type": "add", "inputs": ["a", "b"]}]
    if kind != "global_avgpool":
        layers.append({"name": "gap", "type": "global_avgpool"})
    layers.append({"name": "out", "type": "dense", "units": 3})
    image = {"channels": 2, "height": 10, "width": 70} if kind == "conv_strided_phases" else \
        {"channels": 16, "height": 6, "width": 6}
    return _spec(f"writers_{kind}", image, layers)


# and three more: two dense layers behind one flatten, concat and add of one tensor with itself
_MORE_WRITERS = {
    "dense": _spec("writers_dense", {"channels": 2, "height": 3, "width": 3}, [
        {"name": "pre", "type": "leaky_relu", "alpha": 1.0}, {"name": "flat", "type": "flatten"},
        {"name": "a", "type": "dense", "units": 4, "inputs": ["flat"]},
        {"name": "b", "type": "dense", "units": 4, "activation": "relu", "inputs": ["flat"]},
        {"name": "merged", "type": "add", "inputs": ["a", "b"]}, {"name": "out", "type": "dense", "units": 3}]),
    "concat_self": _spec("writers_concat", {"channels": 2, "height": 4, "width": 4}, [
        {"name": "pre", "type": "leaky_relu", "alpha": 1.0},
        {"name": "a", "type": "concat", "inputs": ["pre", "pre"]},
        {"name": "b", "type": "conv2d", "filters": 4, "kernel": 3, "inputs": ["pre"]},
        {"name": "gap_a", "type": "global_avgpool", "inputs": ["a"]}, {"name": "gap_b", "type": "global_avgpool", "inputs": ["b"]},
        {"name": "merged", "type": "add", "inputs": ["gap_a", "gap_b"]}, {"name": "out", "type": "dense", "units": 3}]),
    "add_self": _spec("writers_add", {"channels": 2, "height": 4, "width": 4}, [
        {"name": "pre", "type": "leaky_relu", "alpha": 1.0},
        {"name": "a", "type": "add", "inputs": ["pre", "pre"]}, {"name": "b", "type": "tanh", "inputs": ["pre"]},
        {"name": "merged", "type": "add", "inputs": ["a", "b"]}, {"name": "gap", "type": "global_avgpool"},
        {"name": "out", "type": "dense", "units": 3}]),
}
WRITER_SPECS = {**{kind: _two_writers_spec(kind) for kind in _BRANCHES}, **_MORE_WRITERS}


@pytest.fixture(scope="module")
def writer_nets(compile_many):
    return dict(zip(WRITER_SPECS, compile_many(list(WRITER_SPECS.values()))))


@pytest.mark.parametrize("kind", list(WRITER_SPECS))
def test_a_gradient_two_layers_write_is_written_by_the_first_and_added_to_by_the_second(kind, writer_nets):
    m = writer_nets[kind].init(3)
    program = m.program
    tensor = program.ops[0].output  # pre's (a flatten is a view of it: the dense layers read it too)
    assert tensor.name == "pre"
    writes = [(op.layer, k, op.plan.initialises_grad(k)) for op in program.backward_ops
              for k, t in enumerate(op.inputs) if t.name == tensor.name]
    # the first writer in the reverse schedule (b, or a's first input) writes with `=`, the rest add
    assert writes[0][2] and not any(w for _, _, w in writes[1:]), writes
    assert len(writes) >= 2 and tensor.name in program.initialised_gradients
    assert tensor.name not in {r.first.name for r in program.zeroed_ranges()}
    if kind == "conv_strided_phases":
        assert all(op.plan.settings["din_by_phases"] for op in program.ops if op.layer in ("a", "b"))
    x, y = _problem(m, n=3, seed=11)
    seed = 3  # the dropout masks

    def f():
        return m.loss(x, y, training=True, seed=seed)

    m.gradients(x, y, seed=seed)
    grad = m.activation("pre", x.shape[0], grad=True).copy()
    assert np.abs(grad).max() > 0
    indices = _sample(x.shape, np.random.default_rng(zlib.crc32(kind.encode())), 16)
    # pre is the identity of the input: d loss / d pre = d loss / d x
    numeric = _sampled_fd(f, x, indices)
    analytic = np.array([grad[i] for i in indices])
    err = np.abs(numeric - analytic).max() / np.abs(grad).max()
    assert err <= TOL_FD, f"d loss / d pre: finite differences {numeric} vs backward {analytic} (error {err:.3g})"


# ---------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------

OPT_LAYERS = [
    {"name": "conv", "type": "conv2d", "filters": 3, "kernel": 3, "activation": "relu"},
    {"name": "bn", "type": "batchnorm"},
    {"type": "flatten"},
    {"name": "fc", "type": "dense", "units": 4},
]
OPTIMIZERS = {
    "sgd": {"type": "sgd", "lr": 0.1},
    "sgd_weight_decay": {"type": "sgd", "lr": 0.1, "weight_decay": 0.01},
    "momentum": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    "nesterov": {"type": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": True},
    "nesterov_weight_decay": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    "adam": {"type": "adam", "lr": 0.01},
    "adam_weight_decay": {"type": "adam", "lr": 0.02, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                          "weight_decay": 0.01},
}


def _opt_spec(key):
    # One C name for all: specs that differ only in runtime hyperparameters share a build.
    return _spec("opt_net", {"channels": 2, "height": 5, "width": 5}, OPT_LAYERS, optimizer=OPTIMIZERS[key])


@pytest.fixture(scope="module")
def opt_models(compile_many):
    keys = list(OPTIMIZERS)
    return dict(zip(keys, compile_many([_opt_spec(k) for k in keys])))


@pytest.mark.parametrize("key", list(OPTIMIZERS))
def test_train_step_matches_the_reference_optimizer(key, opt_models):
    m = opt_models[key].init(4)
    h = m.hyper
    rng = np.random.default_rng(9)
    trainable = [p.key for p in m.program.params if p.trainable]
    weights = {k: m.params[k].astype(np.float64).copy() for k in trainable}
    state = {k: None for k in trainable} if OPTIMIZERS[key]["type"] == "sgd" else \
        {k: (np.zeros_like(w), np.zeros_like(w)) for k, w in weights.items()}
    for step in range(1, 4):
        x = rng.standard_normal((5, 2, 5, 5))
        labels = rng.integers(0, 4, 5)
        loss, grads = m.gradients(x, labels, seed=step)
        assert m.train_step(x, labels, seed=step) == pytest.approx(loss, rel=1e-14)
        for k in trainable:
            if OPTIMIZERS[key]["type"] == "sgd":
                weights[k], state[k] = ref.sgd_step(weights[k], grads[k], h["lr"], h["momentum"], h["nesterov"],
                                                    h["weight_decay"], state[k])
            else:
                weights[k], mom, vel = ref.adam_step(weights[k], grads[k], *state[k], step, h["lr"], h["beta1"],
                                                     h["beta2"], h["eps"], h["weight_decay"])
                state[k] = (mom, vel)
        if step in (1, 3):
            for k in trainable:
                assert rel_err(m.params[k], weights[k]) <= TOL_OPT, f"{key} step {step}: {k}"
    assert m.step_count == 3
    if OPTIMIZERS[key]["type"] == "adam":
        first = m.flat_optimizer_state[:m.program.num_trainable]
        for p in m.program.params:
            if p.trainable:
                assert rel_err(first[p.offset:p.offset + p.size].reshape(p.shape), state[p.key][0]) <= TOL_OPT


def test_sgd_changes_only_trainable_parameters_through_the_optimizer(opt_models):
    m = opt_models["sgd"].init(2)
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5))
    labels = np.arange(6) % 4
    before = {k: v.copy() for k, v in m.params.items()}
    m.train_step(x, labels)
    assert not np.array_equal(m.params["conv.weight"], before["conv.weight"])
    # running statistics follow the batch (momentum 0.1), not the gradient
    conv = ref.relu(ref.conv2d(x, before["conv.weight"], before["conv.bias"]))
    _, rm, rv = ref.batchnorm_train(conv, before["bn.gamma"], before["bn.beta"], before["bn.running_mean"],
                                    before["bn.running_var"], momentum=0.1)
    assert rel_err(m.params["bn.running_mean"], rm) <= 1e-12
    assert rel_err(m.params["bn.running_var"], rv) <= 1e-12


# ---------------------------------------------------------------------------------------
# the compile cache
# ---------------------------------------------------------------------------------------

def test_same_spec_hits_the_cache_and_a_changed_spec_recompiles(build_dir):
    name = "cache_" + uuid.uuid4().hex[:8]
    spec = _spec(name, {"channels": 1, "length": 8}, [{"name": "c", "type": "conv1d", "filters": 2, "kernel": 3}],
                 loss="mse")
    count = cnncc.build.compile_count
    first = cnncc.compile(spec, build_dir=build_dir)
    assert not first.module.from_cache and cnncc.build.compile_count == count + 1
    again = cnncc.compile(copy.deepcopy(spec), build_dir=build_dir)
    assert again.module.from_cache and cnncc.build.compile_count == count + 1
    assert again.module.path == first.module.path
    changed = copy.deepcopy(spec)
    changed["layers"][0]["kernel"] = 5
    other = cnncc.compile(changed, build_dir=build_dir)
    assert not other.module.from_cache and cnncc.build.compile_count == count + 2
    assert other.module.path != first.module.path
    # the same sources under other compiler flags are another cache entry
    flagged = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",))
    assert not flagged.module.from_cache and cnncc.build.compile_count == count + 3
    # and a cached module behaves like the fresh one
    x = np.random.default_rng(0).standard_normal((3, 1, 8))
    first.init(5)
    again.init(5)
    np.testing.assert_array_equal(first.forward(x), again.forward(x))


# ---------------------------------------------------------------------------------------
# every template variant compiles warning-free
# ---------------------------------------------------------------------------------------

VARIANT_SPECS = [
    # inference only (no loss, no backward), float32
    _spec("variant_inference", {"channels": 2, "height": 6, "width": 6}, [
        {"name": "c", "type": "conv2d", "filters": 2, "kernel": 3, "activation": "softmax"},
        {"name": "p", "type": "avgpool2d", "kernel": 2},
        {"type": "flatten"}, {"name": "d", "type": "dense", "units": 3, "bias": False, "activation": "tanh"},
        {"name": "s", "type": "softmax"},
    ], loss=None, dtype="float32"),
    # every kind reading the network input directly, then joined (float32, mse)
    _spec("variant_first_layers", {"channels": 2, "height": 4, "width": 4}, [
        {"name": "bn", "type": "batchnorm", "inputs": ["input"]},
        {"name": "dr", "type": "dropout", "inputs": ["input"]},
        {"name": "mp", "type": "maxpool2d", "kernel": 1, "inputs": ["input"]},
        {"name": "ap", "type": "avgpool2d", "kernel": 1, "inputs": ["input"]},
        {"name": "sm", "type": "softmax", "inputs": ["input"]},
        {"name": "lr", "type": "leaky_relu", "alpha": 0.3, "inputs": ["input"]},
        {"name": "sg", "type": "sigmoid", "inputs": ["input"]},
        {"name": "ad", "type": "add", "inputs": ["input", "input", "bn"]},
        {"name": "cc", "type": "concat", "inputs": ["input", "dr", "mp", "ap", "sm", "lr", "sg", "ad"]},
        {"name": "g", "type": "global_avgpool", "inputs": ["input"]},
        {"name": "g2", "type": "global_avgpool", "inputs": ["cc"]},
        {"name": "j", "type": "concat", "inputs": ["g", "g2"]},
    ], loss="mse", dtype="float32"),
    # sgd without momentum, sigmoid-layer bce, conv1d first, float32
    _spec("variant_bce", {"channels": 2, "length": 9}, [
        {"name": "c", "type": "conv1d", "filters": 2, "kernel": 3, "padding": "same", "groups": 2, "bias": False},
        {"name": "p", "type": "maxpool1d", "kernel": 3, "stride": 2, "padding": 1},
        {"name": "s", "type": "sigmoid"},
    ], loss="binary_cross_entropy", dtype="float32"),
    # sgd with momentum, softmax cross-entropy, float32
    _spec("variant_sgd_momentum", {"channels": 1, "height": 5, "width": 5}, [
        {"type": "flatten"}, {"name": "d", "type": "dense", "units": 3},
    ], dtype="float32", optimizer={"type": "sgd", "momentum": 0.5}),
]


def test_every_template_variant_compiles_with_warnings_as_errors(compile_many):
    specs = sorted(SPECS_DIR.glob("*.yaml"))
    assert len(specs) >= 7
    float32_nets = [{**spec, "name": spec["name"] + "_f32", "dtype": "float32"} for spec in NETS.values()]
    # the example specs with the training digests' flags (their build is shared with test_digests)
    models = compile_many([str(p) for p in specs], BASELINE_WERROR)
    models += compile_many(list(NETS.values()) + float32_nets + VARIANT_SPECS
                           + [_opt_spec("sgd"), _opt_spec("momentum"), _opt_spec("adam")], WERROR)
    assert all(m.module.path.is_file() for m in models)
    # the variant models also run: one forward and one training step each
    for m in models[-len(VARIANT_SPECS) - 3:]:
        x = np.random.default_rng(0).standard_normal((2,) + tuple(m.input_shape))
        assert np.isfinite(m.forward(x)).all()
        if m.program.loss is not None:
            t = np.array([0, 1]) if m.program.loss.takes_labels else np.full((2,) + tuple(m.output_shape), 0.5)
            assert math.isfinite(m.train_step(x, t))


def test_sample_slots_multiply_only_the_convs_scratch_and_stay_within_int():
    from cnncc.check import check_net
    from cnncc.lowering import lower
    net = check_net(cnncc.load_spec(str(SPECS_DIR / "vgg_cifar.yaml")))
    one, two = lower(net), lower(net, sample_slots=2)
    for a, b in zip(one.ops, two.ops):
        if a.kind == "conv2d":  # every slot has the scratch of one sample; what they share is there once
            assert a.plan.forward_dims["SLOT_SIZE"] == b.plan.forward_dims["SLOT_SIZE"]
            assert b.workspace_size > a.workspace_size
            assert b.workspace_size - a.workspace_size == a.plan.forward_dims["SLOT_SIZE"]
        else:
            assert a.workspace_size == b.workspace_size
    with pytest.raises(ValueError, match="conv1_1: 100000 threads would need .* use fewer threads"):
        lower(net, sample_slots=100_000)


def test_threaded_builds_compile_with_warnings_as_errors(build_dir):
    """The OpenMP build (threads > 1: sample slots, parallel loops) of every spec in specs/ and the
    networks above, under -Wall -Wextra -Werror; each takes a training step."""
    specs = [str(p) for p in sorted(SPECS_DIR.glob("*.yaml"))] + list(NETS.values())
    for spec in specs:
        m = cnncc.compile(spec, build_dir=build_dir, cflags=WERROR_THREADED, threads=2).init(0)
        assert m.program.sample_slots == 2
        x = np.random.default_rng(0).standard_normal((3,) + tuple(m.input_shape))
        if m.program.loss is not None:
            t = np.array([0, 1, 0]) if m.program.loss.takes_labels else np.full((3,) + tuple(m.output_shape), 0.5)
            assert math.isfinite(m.train_step(x, t))


# ---------------------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(build_dir):
    return cnncc.compile(NETS["lenet5"], build_dir=build_dir)


@pytest.fixture(scope="module")
def small_mse(nets):
    return nets["mse"]


def test_wrong_shape_names_the_expected_shape(small):
    with pytest.raises(ValueError, match=r"\(N, 2, 16, 16\)"):
        small.forward(np.zeros((3, 2, 16, 15)))
    with pytest.raises(ValueError, match=r"\(N, 2, 16, 16\)"):
        small.forward(np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match=r"\(N, 2, 16, 16\)"):
        small.loss(np.zeros((3, 1, 16, 16)), np.zeros(3, dtype=int))


@pytest.mark.parametrize("bad", [
    np.zeros((2, 2, 16, 16), dtype=complex),
    np.zeros((2, 2, 16, 16), dtype=object),
    np.full((2, 2, 16, 16), "1.0"),
    np.zeros((2, 2, 16, 16), dtype="datetime64[s]"),
], ids=["complex", "object", "string", "datetime"])
def test_non_real_inputs_are_refused(small, bad):
    with pytest.raises(ValueError, match="real numeric"):
        small.forward(bad)


def test_float32_and_integer_inputs_are_converted(small):
    x = np.random.default_rng(0).standard_normal((3, 2, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(small.forward(x), small.forward(x.astype(np.float64)))
    xi = np.random.default_rng(1).integers(-3, 4, (2, 2, 16, 16))
    np.testing.assert_array_equal(small.forward(xi), small.forward(xi.astype(np.float64)))
    assert small.forward(x.tolist()).shape == (3, 5)  # nested lists too


def test_non_contiguous_inputs_give_the_contiguous_result(small):
    rng = np.random.default_rng(2)
    big = rng.standard_normal((4, 2, 16, 32))
    strided = big[:, :, :, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(small.forward(strided), small.forward(np.ascontiguousarray(strided)))
    transposed = rng.standard_normal((16, 16, 2, 6)).transpose(3, 2, 0, 1)[1:5]
    assert not transposed.flags.c_contiguous
    np.testing.assert_array_equal(small.forward(transposed), small.forward(transposed.copy()))
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])[::2]
    assert small.loss(strided, labels) == small.loss(strided.copy(), labels.copy())
    fortran = np.asfortranarray(rng.standard_normal((3, 2, 16, 16)))
    np.testing.assert_array_equal(small.forward(fortran), small.forward(np.ascontiguousarray(fortran)))


def test_empty_batch_and_non_finite_inputs_are_refused(small):
    with pytest.raises(ValueError, match="batch size 0"):
        small.forward(np.zeros((0, 2, 16, 16)))
    x = np.zeros((2, 2, 16, 16))
    x[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        small.forward(x)
    x[1, 0, 3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        small.loss(x, np.array([0, 1]))
    # the check runs in C (all_finite) over every element: the first, the last, each kind of
    # non-finite value
    for index in ((0, 0, 0, 0), (1, 1, 15, 15)):
        for value in (np.nan, np.inf, -np.inf):
            x = np.zeros((2, 2, 16, 16))
            x[index] = value
            with pytest.raises(ValueError, match="NaN or infinite"):
                small.forward(x)
    x = np.full((2, 2, 16, 16), np.finfo(small.dtype).max)
    assert small.forward(x).shape[0] == 2  # the largest finite value is finite


def test_inputs_that_overflow_the_model_dtype_are_refused(build_dir):
    model = cnncc.compile({**NETS["lenet5"], "dtype": "float32"}, build_dir=build_dir)
    x = np.zeros((1, 2, 16, 16))
    x[0, 1, 15, 15] = 1e300  # finite as float64, infinite as the model's float32
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.forward(x)


def test_labels_are_checked(small):
    x = np.zeros((3, 2, 16, 16))
    with pytest.raises(ValueError, match="integers"):
        small.loss(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        small.loss(x, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        small.gradients(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        small.loss(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        small.train_step(x, np.array([[0], [1], [2]]))
    assert math.isfinite(small.loss(x, np.array([0, 4, 2], dtype=np.uint8)))


def test_targets_are_checked(small_mse):
    x = np.zeros((2, 2, 7, 6))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        small_mse.loss(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        small_mse.gradients(x, np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        small_mse.loss(x, np.full((2, 3), np.nan))


def test_a_spec_without_loss_is_inference_only(build_dir):
    spec = _spec("no_loss", {"channels": 1, "length": 6}, [{"name": "c", "type": "conv1d", "filters": 2,
                                                           "kernel": 3}], loss=None)
    m = cnncc.compile(spec, build_dir=build_dir)
    x = np.ones((2, 1, 6))
    assert m.forward(x).shape == (2, 2, 4)
    for call in (m.gradients, m.loss, m.train_step):
        with pytest.raises(ValueError, match="inference only"):
            call(x, np.zeros((2, 2, 4)))


def test_a_loss_on_the_unchanged_network_input_is_a_spec_error(build_dir):
    """The loss reads a computed tensor; these used to reach the C compiler and fail there."""
    flat = {"channels": 3, "length": 1}
    with pytest.raises(cnncc.SpecError, match="outputs the network input unchanged"):
        cnncc.compile(_spec("only_views", flat, [{"type": "flatten"}, {"type": "linear"}], loss="mse"),
                      build_dir=build_dir)
    with pytest.raises(cnncc.SpecError, match="applies its sigmoid to the network input"):
        cnncc.compile(_spec("bce_on_input", flat, [{"type": "flatten"}, {"type": "sigmoid"}],
                            loss="binary_cross_entropy"), build_dir=build_dir)
    m = cnncc.compile(_spec("bce_after_relu", flat, [{"type": "flatten"}, {"type": "relu"}, {"type": "sigmoid"}],
                            loss="binary_cross_entropy"), build_dir=build_dir)
    z = np.array([[0.5, -1.0, 2.0]])
    t = np.array([[1.0, 0.0, 0.25]])
    assert m.loss(z[:, :, None], t) == pytest.approx(ref.binary_cross_entropy_with_logits(ref.relu(z), t)[0],
                                                     rel=1e-14)


# ---------------------------------------------------------------------------------------
# parameters: views, initialisation
# ---------------------------------------------------------------------------------------

def test_params_are_views_of_what_the_c_code_reads(small_mse):
    m = small_mse.init(0)
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 6))
    before = m.forward(x)
    m.params["out.bias"][...] += 1.5
    np.testing.assert_allclose(m.forward(x), before + 1.5, rtol=1e-12)
    m.params["conv.weight"][...] = 0
    m.params["conv.bias"][...] = 0
    m.params["hidden.bias"][...] = 0
    np.testing.assert_allclose(m.forward(x), np.broadcast_to(m.params["out.bias"], (2, 3)), rtol=0, atol=0)
    assert m.params["conv.weight"].shape == (3, 2, 3, 3)
    assert m.params["hidden.weight"].shape == (6, 3 * 3 * 3)
    assert np.shares_memory(m.params["conv.weight"], m.flat_params)


def test_every_buffer_handed_to_c_starts_on_a_cache_line(small_mse):
    """numpy's allocations are 16-byte aligned; the kernels' 64-byte vectors would straddle cache
    lines (buffers.aligned_zeros)."""
    m = small_mse.init(0)
    m.train_step(np.zeros((3, 2, 7, 6)), np.zeros((3, 3)))
    buffers = [m.flat_params, m.flat_grads, m.flat_optimizer_state, m.flat_activations(3),
               m.flat_activations(3, grad=True)]
    assert all(b.ctypes.data % 64 == 0 and b.flags.c_contiguous and b.flags.writeable for b in buffers if b.size)
    assert sum(1 for b in buffers if b.size) == 4  # plain SGD keeps no optimizer state
    assert m.flat_params.dtype == m.dtype and m.flat_params.size == m.program.num_params


def test_init_is_deterministic_per_seed_with_he_and_glorot_scales(build_dir):
    spec = _spec("init_net", {"channels": 16, "height": 8, "width": 8}, [
        {"name": "conv", "type": "conv2d", "filters": 64, "kernel": 3, "activation": "relu"},
        {"name": "bn", "type": "batchnorm"},
        {"name": "plain", "type": "conv2d", "filters": 32, "kernel": 3},
        {"name": "gap", "type": "global_avgpool"},
        {"name": "fc", "type": "dense", "units": 200, "activation": "leaky_relu"},
    ], loss=None)
    m = cnncc.compile(spec, build_dir=build_dir)
    m.init(7)
    first = {k: v.copy() for k, v in m.params.items()}
    m.init(8)
    assert not np.array_equal(first["conv.weight"], m.params["conv.weight"])
    m.init(7)
    for k, v in first.items():
        np.testing.assert_array_equal(m.params[k], v)
    w = m.params["conv.weight"]  # He: std sqrt(2 / fan_in), fan_in = 16 * 3 * 3
    assert abs(w.std() / math.sqrt(2 / 144) - 1) < 0.05 and abs(w.mean()) < 0.01
    fc = m.params["fc.weight"]  # leaky_relu is He too, fan_in 32
    assert abs(fc.std() / math.sqrt(2 / 32) - 1) < 0.05
    plain = m.params["plain.weight"]  # Glorot uniform: limit sqrt(6 / (fan_in + fan_out))
    limit = math.sqrt(6 / (64 * 9 + 32 * 9))
    assert np.abs(plain).max() <= limit and np.abs(plain).max() > 0.95 * limit
    for key in ("conv.bias", "plain.bias", "fc.bias", "bn.beta", "bn.running_mean"):
        assert not m.params[key].any(), key
    for key in ("bn.gamma", "bn.running_var"):
        assert (m.params[key] == 1).all(), key


# ---------------------------------------------------------------------------------------
# batch independence and float32
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet_small", "signal1d", "lenet5"])
def test_a_batch_equals_its_samples_one_by_one(name, nets):
    m = nets[name].init(3)
    rng = np.random.default_rng(4)
    for key, view in m.params.items():  # inference uses the running statistics: make them matter
        if key.endswith("running_mean"):
            view[...] = rng.standard_normal(view.shape)
        elif key.endswith("running_var"):
            view[...] = rng.uniform(0.5, 2, view.shape)
    for n in (1, 7, 64):
        x = rng.standard_normal((n,) + tuple(m.input_shape))
        batch = m.forward(x)
        singles = np.concatenate([m.forward(x[i:i + 1]) for i in range(n)])
        np.testing.assert_array_equal(batch, singles)
        np.testing.assert_array_equal(m.forward(x, batch_size=3), batch)  # chunked


@pytest.mark.parametrize("name", ["resnet_small", "signal1d", "bce"])
def test_float32_network_matches_float64(name, nets, build_dir):
    m64 = nets[name].init(2)
    m32 = cnncc.compile({**NETS[name], "name": NETS[name]["name"] + "_f32", "dtype": "float32"},
                        build_dir=build_dir)
    for key, view in m64.params.items():
        m32.params[key][...] = view
    x, y = _problem(m64, n=6, seed=8)
    assert rel_err(m32.forward(x), m64.forward(x)) <= 1e-5
    assert m32.loss(x, y, seed=1) == pytest.approx(m64.loss(x, y, seed=1), rel=1e-5)
    _, g32 = m32.gradients(x, y, seed=1)
    _, g64 = m64.gradients(x, y, seed=1)
    for key in g64:
        assert rel_err(g32[key], g64[key]) <= 1e-3, key


THREADED_SPECS = {
    # The convs' backward products are over the parallel threshold (2^21 multiply-adds): conv1's
    # weight gradient 144 x 32 x 622 per sample, conv2's 288 x 32 x 622 and, for its input
    # gradient, 32 x 622 x 288 (their forwards go round the sample slots instead).
    "large_products": {
        "name": "threaded", "input": {"channels": 16, "height": 24, "width": 24},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 32, "kernel": 3, "padding": 1, "activation": "relu"},
                   {"name": "conv2", "type": "conv2d", "filters": 32, "kernel": 3, "padding": 1},
                   {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 10}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.001}},
    # Small convs, both backwards through their pools (sample slots, each slot's gradients summed
    # in sample order), the second conv's also with its input gradient.
    "pooled": {
        "name": "threaded_pooled", "input": {"channels": 16, "height": 24, "width": 24},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 8, "kernel": 5, "activation": "relu"},
                   {"name": "pool1", "type": "maxpool2d", "kernel": 2},
                   {"name": "conv2", "type": "conv2d", "filters": 12, "kernel": 3, "padding": 1},
                   {"name": "pool2", "type": "maxpool2d", "kernel": 2},
                   {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 10}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.001}},
    # A depthwise conv (two filters per channel) over the parallel threshold: 64 x 9 x 576 multiply-adds
    # per sample, 3.0 million for the batch: its samples go round the sample slots.
    "depthwise": {
        "name": "threaded_depthwise", "input": {"channels": 16, "height": 24, "width": 24},
        "layers": [{"name": "pw", "type": "conv2d", "filters": 32, "kernel": 1, "bias": False},
                   {"name": "dw", "type": "conv2d", "filters": 64, "kernel": 3, "padding": "same", "groups": 32,
                    "activation": "relu"},
                   {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 10}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.001}},
    # A residual block: batchnorm splits its channels over the threads and add its elements
    # (9 x 16 x 24 x 24 = 82,944 elements, over the element-wise threshold of 65,536).
    "batchnorm_add": {
        "name": "threaded_residual", "input": {"channels": 16, "height": 24, "width": 24},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 16, "kernel": 3, "padding": 1},
                   {"name": "bn1", "type": "batchnorm"}, {"name": "relu1", "type": "relu"},
                   {"name": "conv2", "type": "conv2d", "filters": 16, "kernel": 3, "padding": 1},
                   {"name": "bn2", "type": "batchnorm"},
                   {"name": "sum", "type": "add", "inputs": ["relu1", "bn2"]}, {"name": "out", "type": "relu"},
                   {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 10}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.001}},
}


@pytest.mark.parametrize("key", list(THREADED_SPECS))
def test_threads_change_nothing_but_the_speed(key, build_dir):
    """Large products split over threads by output blocks, each element summed by one thread in
    a fixed order, and the convs' samples go round one slot per thread, their gradients summed
    in sample order: training at 1 and at 2 threads, and a build without threads, give the same
    bits (batch 9: the last group of samples fills one slot of two)."""
    spec = THREADED_SPECS[key]
    model = cnncc.compile(spec, build_dir=build_dir, threads=2)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 16, 24, 24))
    y = rng.integers(0, 10, 9)
    results = []
    for threads in (1, 2, 1):
        assert model.init(3).set_threads(threads) == threads
        losses = [model.train_step(x, y, seed=1) for _ in range(3)]
        results.append((losses, model.forward(x), {k: v.copy() for k, v in model.params.items()}))
    for losses, out, params in results[1:]:
        assert losses == results[0][0]
        assert np.array_equal(out, results[0][1])
        assert all(np.array_equal(params[k], results[0][2][k]) for k in params)
    with pytest.raises(ValueError, match="positive integer"):
        model.set_threads(0)
    model.set_threads(1)
    serial = cnncc.compile(spec, build_dir=build_dir).init(3)
    assert serial.set_threads(2) == 1  # not an OpenMP build: always one thread
    assert [serial.train_step(x, y, seed=1) for _ in range(3)] == results[0][0]  # and the same numbers
    assert np.array_equal(serial.forward(x), results[0][1])
    assert all(np.array_equal(serial.params[k], results[0][2][k]) for k in serial.params)

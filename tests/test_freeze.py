"""Fine-tuning with frozen layers: `trainable: false` in a spec, Model.freeze / unfreeze.

A frozen layer's parameters never change and hold no optimizer state; nothing before the first
trainable layer runs backward; the tensors only frozen layers read share memory, and the training
memory `cnncc check --batch 1` reports is what the build allocates."""
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnncc
from cnncc.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "specs/lenet5.yaml"
ALL_BUT_LAST_TWO = ["conv1", "pool1", "conv2", "pool2", "flatten_1", "fc3"]
# LeNet's batch-1 training memory (adam), every buffer the build allocates: before and after
# freezing all but fc4 and fc5. The cut: Adam's two moments of the frozen parameters (0.41 MB) and
# the activations and their gradients of the frozen convs, which now share memory (2 x 21 KB). The
# convs' and dense layers' scratch is one shared region with or without frozen layers (it is used
# only within a kernel call: memplan.place_workspaces), as large as conv2's (66 KB).
LENET_TRAINING_BYTES = 1_155_216
LENET_FROZEN_TRAINING_BYTES = 515_888


def frozen_lenet() -> dict:
    spec = yaml.safe_load(LENET.read_text())
    for layer in spec["layers"][:-2]:
        layer["trainable"] = False
    return spec


def test_the_spec_field_is_validated():
    spec = frozen_lenet()
    spec["layers"][0]["trainable"] = "no"
    with pytest.raises(SpecError) as info:
        cnncc.load_spec(spec)
    message = info.value.format()
    assert "trainable" in message and "conv1" in message
    spec["layers"][0]["trainabel"] = False
    with pytest.raises(SpecError, match="did you mean 'trainable'"):
        cnncc.load_spec(spec)


def test_frozen_layers_in_the_program():
    program = cnncc.check(frozen_lenet(), batch=1).program
    assert program.num_trainable == 84 * 120 + 84 + 10 * 84 + 10
    assert [p.key for p in program.params[:4]] == ["fc4.weight", "fc4.bias", "fc5.weight", "fc5.bias"]
    assert all(not p.trainable for p in program.params[4:])
    # nothing before the first trainable layer runs backward, and fc4 computes no input gradient
    assert [op.name for op in program.backward_ops] == ["fc5", "fc4"]  # fc4 with its relu
    fc4 = next(op for op in program.ops if op.name == "fc4")
    assert fc4.input_grads == (False,)
    assert program.optimizer_state_size == 2 * program.num_trainable


def test_training_memory_before_and_after():
    before = cnncc.check(LENET, batch=1).program.buffer_bytes(1, training=True)
    after = cnncc.check(frozen_lenet(), batch=1).program.buffer_bytes(1, training=True)
    assert (before, after) == (LENET_TRAINING_BYTES, LENET_FROZEN_TRAINING_BYTES)
    report = cnncc.check(frozen_lenet(), batch=1).to_text()
    assert f"training memory at batch 1 (adam): {LENET_FROZEN_TRAINING_BYTES:,} bytes" in report


def test_without_frozen_layers_the_program_is_unchanged():
    from cnncc.lowering import lower
    from cnncc.check import check_net

    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        lowered = lower(check_net(cnncc.load_spec(spec)))
        assert cnncc.check(spec).program == lowered, spec.name


def test_frozen_training_equals_training_with_the_frozen_weights_restored(build_dir):
    """Every step of the frozen model equals a full model's step whose frozen weights are put
    back afterwards: the trainable parameters see the same gradients and the same Adam state."""
    full = cnncc.compile(LENET, build_dir=build_dir).init(3)
    frozen = full.freeze(ALL_BUT_LAST_TWO, build_dir=build_dir)
    assert frozen.program.num_trainable == cnncc.check(frozen_lenet()).program.num_trainable
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 6).astype(np.int32)
    start = {k: v.copy() for k, v in full.params.items()}
    for _ in range(3):
        assert full.train_step(x, y) == pytest.approx(frozen.train_step(x, y), rel=1e-6)
        for key in start:
            if not key.startswith(("fc4.", "fc5.")):
                full.params[key][...] = start[key]
    for key, value in frozen.params.items():
        np.testing.assert_allclose(value, full.params[key], rtol=1e-6, atol=1e-7)
        if not key.startswith(("fc4.", "fc5.")):
            np.testing.assert_array_equal(value, start[key])
    np.testing.assert_allclose(frozen.predict(x), full.predict(x), rtol=1e-5, atol=1e-6)


def test_freeze_and_unfreeze(build_dir):
    model = cnncc.compile(LENET, build_dir=build_dir).init(5)
    model.step_count = 7
    frozen = model.freeze(["conv1", "conv2"], build_dir=build_dir)
    assert [layer.name for layer in frozen.spec.layers if not layer.trainable] == ["conv1", "conv2"]
    assert frozen.step_count == 7 and all(np.array_equal(frozen.params[k], v) for k, v in model.params.items())
    assert model.program.num_trainable == 62_958  # the original is unchanged
    thawed = frozen.unfreeze(["conv1", "conv2"], build_dir=build_dir)
    assert thawed.program == model.program
    with pytest.raises(ValueError, match="no layer named 'conv9'; the layers are conv1, pool1"):
        model.freeze(["conv9"])
    with pytest.raises(ValueError, match="a list of layer names"):
        model.freeze("conv1")


@pytest.mark.parametrize("case", ["no layer with weights", "every layer frozen"])
def test_a_network_with_nothing_to_train_compiles_warning_free_and_steps_as_a_no_op(build_dir, case):
    layers = [{"type": "relu"}, {"type": "flatten"}] if case == "no layer with weights" else \
        [{"name": "c", "type": "conv1d", "filters": 2, "kernel": 3, "trainable": False}, {"type": "flatten"},
         {"name": "d", "type": "dense", "units": 2, "trainable": False}]
    spec = {"name": "untrainable", "input": {"channels": 1, "length": 5}, "layers": layers, "loss": "mse",
            "optimizer": {"type": "adam"}}
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1", "-Wall", "-Wextra", "-Werror")).init(0)
    assert model.program.num_trainable == 0
    x = np.random.default_rng(0).normal(size=(3, 1, 5))
    y = np.zeros((3,) + tuple(model.output_shape))
    before = model.flat_params.copy()
    loss = model.train_step(x, y)
    assert np.isfinite(loss) and model.step_count == 1
    assert np.array_equal(model.flat_params, before)


SANDWICH = {"name": "sandwich", "input": {"channels": 2, "height": 12, "width": 12},
            "layers": [{"name": "first", "type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
                       {"name": "mid", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "activation": "relu"},
                       {"name": "pool", "type": "maxpool2d", "kernel": 2},
                       {"name": "up", "type": "conv_transpose2d", "filters": 3, "kernel": 2},
                       {"name": "bn", "type": "batchnorm"},
                       {"name": "mid_strided", "type": "conv2d", "filters": 6, "kernel": 3, "stride": 2},
                       {"name": "act", "type": "tanh"},
                       {"type": "flatten"}, {"name": "hidden", "type": "dense", "units": 8},
                       {"name": "out", "type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}}
SANDWICHED = ["mid", "up", "bn", "mid_strided", "hidden"]  # frozen between the trainable first and out
INPUT_FREE = ["mid", "mid_strided", "hidden"]  # their input gradient does not read their input


def test_frozen_layers_between_trainable_ones_compute_input_gradients_only(build_dir):
    """Frozen convs (a shifted and an im2col one), a transposed conv, a batchnorm and a dense
    between trainable layers: their backward computes only the input gradient (the convs' and the
    dense's without keeping their inputs for it), and every step equals the full model's with the
    frozen weights put back."""
    spec = {**SANDWICH, "dtype": "float64"}
    full = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)).init(2)
    frozen = full.freeze(SANDWICHED, build_dir=build_dir)
    assert not [op for op in frozen.program.ops if op.pooled]  # mid -> pool: the plain backward when frozen
    assert [op.name for op in full.program.ops if op.pooled] == ["mid"]
    for op in frozen.program.ops:
        if op.layer in SANDWICHED:
            assert not {"dweight", "dbias", "dgamma", "dbeta"} & set(op.plan.backward_args), op.plan
        if op.name in INPUT_FREE:
            assert "in" not in op.plan.backward_args, op.plan
    assert frozen.program.buffer_bytes(1, training=True) < full.program.buffer_bytes(1, training=True)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 2, 12, 12))
    y = rng.integers(0, 3, 5).astype(np.int32)
    start = {k: v.copy() for k, v in full.params.items()}
    for _ in range(3):
        assert full.train_step(x, y) == pytest.approx(frozen.train_step(x, y), rel=1e-12)
        for key in start:
            if key.split(".")[0] in SANDWICHED and not key.endswith(("running_mean", "running_var")):
                full.params[key][...] = start[key]
    for key, value in frozen.params.items():
        np.testing.assert_allclose(value, full.params[key], rtol=1e-12, atol=1e-14)


def test_a_frozen_winograd_conv_passes_the_same_input_gradient(build_dir):
    """A 3x3 conv with 16 channels in and out (the vector backend's Winograd plan: forward, input
    and weight gradients) frozen between trainable layers keeps its Winograd input gradient and
    drops the weight gradient: the layer before it gets the full model's gradients."""
    spec = {"name": "winograd_sandwich", "dtype": "float64", "input": {"channels": 3, "height": 9, "width": 10},
            "layers": [{"name": "first", "type": "conv2d", "filters": 16, "kernel": 3, "padding": 1,
                        "activation": "relu"},
                       {"name": "mid", "type": "conv2d", "filters": 16, "kernel": 3, "padding": 1, "activation": "relu"},
                       {"type": "flatten"}, {"name": "out", "type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.05}}
    full = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)).init(3)
    frozen = full.freeze(["mid"], build_dir=build_dir)
    for model, trained in ((full, True), (frozen, False)):
        mid = next(op for op in model.program.ops if op.name == "mid")
        assert mid.plan.settings["winograd_din"] and mid.plan.settings["winograd_dweight"] == trained
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 9, 10))
    y = rng.integers(0, 3, 4).astype(np.int32)
    (full_loss, full_grads), (frozen_loss, frozen_grads) = full.gradients(x, y), frozen.gradients(x, y)
    assert full_loss == frozen_loss
    assert set(frozen_grads) == {"first.weight", "first.bias", "out.weight", "out.bias"}
    for key, grad in frozen_grads.items():
        np.testing.assert_array_equal(grad, full_grads[key])

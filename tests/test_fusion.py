"""A relu runs in the kernels of the op before it (lowering.lower): a conv's, dense's, batchnorm's
or add's `activation: relu`, and a relu layer whose input only it reads (lowering._relu_epilogues).
The op writes max(0, y) where the relu's output goes, and its backward masks the gradient with
that output. An add after a batchnorm runs in the batchnorm's kernels too, with the add's relu
(lowering._residual_epilogues). The fused build must give the same bits as the unfused one
(fuse=False: every layer its own op) in training and inference, at any thread count, pass finite
differences in float64, and refuse, with a message, to return the output it no longer stores."""
import numpy as np
import pytest

import cnncc
from cnncc.gradcheck import check_gradients, random_batch
from cnncc.options import CompileOptions

RESIDUAL = {
    "name": "fused_residual", "input": {"channels": 3, "height": 9, "width": 9},
    # 11 channels: batchnorm's kernels take them in a group of 8 and one of 3
    "layers": [{"name": "conv1", "type": "conv2d", "filters": 11, "kernel": 3, "padding": 1},
               {"name": "bn1", "type": "batchnorm"}, {"name": "relu1", "type": "relu"},
               {"name": "conv2", "type": "conv2d", "filters": 11, "kernel": 3, "padding": 1},
               {"name": "bn2", "type": "batchnorm", "momentum": 0.3},
               {"name": "sum", "type": "add", "inputs": ["relu1", "bn2"]}, {"name": "out", "type": "relu"},
               {"name": "pool", "type": "avgpool2d", "kernel": 3},
               {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 5}],
    "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}}

# bn1's output is read twice (relu1 and the add), so only the add's relu is fused; the last
# batchnorm ends with the relu that is the network's output (its op's tensor becomes the output).
SHARED = {
    "name": "fused_shared", "input": {"channels": 2, "height": 6, "width": 6},
    "layers": [{"name": "conv1", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
               {"name": "bn1", "type": "batchnorm"}, {"name": "relu1", "type": "relu"},
               {"name": "sum", "type": "add", "inputs": ["relu1", "bn1"]}, {"name": "out", "type": "relu"},
               {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 3},
               {"name": "bn_out", "type": "batchnorm"}, {"name": "last", "type": "relu"}],
    "loss": "mse", "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}}


# Every form of the batchnorm's residual epilogue (lowering._residual_epilogues):
#   bn0 + the network input (no residual gradient to write);
#   bn_b + a shortcut conv that runs after it (ResNet's order), no relu after the add;
#   bn_d + relu_a, then the add's relu: relu_a's gradient is first written by add3, so the fused
#   backward adds into it (+=), where the others write theirs (=);
#   bn_q + its own input: not fused (the two gradients would be one tensor).
RESIDUAL_FORMS = {
    "name": "residual_forms", "input": {"channels": 4, "height": 7, "width": 7},
    "layers": [{"name": "conv0", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
               {"name": "bn0", "type": "batchnorm"},
               {"name": "add0", "type": "add", "inputs": ["input", "bn0"]},
               {"name": "conv_a", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1},
               {"name": "bn_a", "type": "batchnorm"}, {"name": "relu_a", "type": "relu"},
               {"name": "conv_b", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1},
               {"name": "bn_b", "type": "batchnorm", "momentum": 0.3},
               {"name": "conv_s", "type": "conv2d", "filters": 6, "kernel": 1, "inputs": ["relu_a"]},
               {"name": "add1", "type": "add", "inputs": ["conv_s", "bn_b"]},
               {"name": "conv_d", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1},
               {"name": "bn_d", "type": "batchnorm"},
               {"name": "add2", "type": "add", "inputs": ["bn_d", "relu_a"]}, {"name": "out2", "type": "relu"},
               {"name": "add3", "type": "add", "inputs": ["out2", "relu_a"]},
               {"name": "conv_q", "type": "conv2d", "filters": 3, "kernel": 3, "padding": 1},
               {"name": "bn_q", "type": "batchnorm"},
               {"name": "add_q", "type": "add", "inputs": ["conv_q", "bn_q"]},
               {"name": "pool", "type": "avgpool2d", "kernel": 7},
               {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 3}],
    "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}}
RESIDUAL_FUSED = {"bn0": "add0", "bn_a": "relu_a", "bn_b": "add1", "bn_d": "add2", "add2": "out2"}

# Every conv plan and the dense, each ending with a relu: its own `activation: relu` or a relu
# layer after it (conv_c, fc2: their own outputs are no longer stored).
EPILOGUES = {
    "name": "conv_dense_epilogues", "input": {"channels": 3, "height": 12, "width": 12},
    "layers": [{"name": "conv_a", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1, "activation": "relu"},
               {"name": "pool_a", "type": "maxpool2d", "kernel": 2},  # the backward through the pool
               # 1x1 ("shifted", one tap wide), 20 filters: the weight gradient as a product
               {"name": "conv_b", "type": "conv2d", "filters": 20, "kernel": 1, "activation": "relu"},
               {"name": "conv_c", "type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "padding": 1},  # im2col
               {"name": "relu_c", "type": "relu"},
               {"name": "dw", "type": "conv2d", "filters": 8, "kernel": 3, "padding": 1, "groups": 8,
                "activation": "relu"},  # depthwise
               {"type": "flatten"},
               {"name": "fc1", "type": "dense", "units": 12, "activation": "relu"},
               {"name": "fc2", "type": "dense", "units": 9}, {"name": "relu_fc2", "type": "relu"},
               {"name": "fc3", "type": "dense", "units": 4}],
    "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}}


def _dtype(spec, dtype):
    return {**spec, "dtype": dtype}


def _train(model, x, y, steps=3):
    model.init(4)
    losses = [model.train_step(x, y, seed=2) for _ in range(steps)]
    return losses, {k: v.copy() for k, v in model.params.items()}, model.predict(x)


# In float64 the sums take no rounding to float between a product and its addition, so with
# -ffp-contract=fast the compiler may fuse them into FMAs differently in the two builds' machine
# code: the bit-for-bit comparison then needs contraction off (in float32 the products are
# rounded to float before they are added in double, so nothing can contract).
FLAGS = {"float32": None, "float64": ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno")}
# The threaded builds here and the serial ones they are compared with: OpenMP builds of these
# networks take three times as long at -O3 (the residual block at 32x32: 11 s against 3.7 s), and
# what is checked is the order of the source's sums, which no optimisation level changes (no
# -ffast-math). test_network.test_threads_change_nothing_but_the_speed checks it at the users' -O3.
THREADED_FLAGS = ("-O1", "-march=native", "-ffp-contract=fast", "-fno-math-errno")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_and_unfused_builds_give_the_same_bits(dtype, build_dir):
    spec = _dtype(RESIDUAL, dtype)
    fused = cnncc.compile(spec, build_dir=build_dir, cflags=FLAGS[dtype])
    unfused = cnncc.compile(spec, build_dir=build_dir, fuse=False, cflags=FLAGS[dtype])
    # bn2's op computes the add and its relu: bn2 -> sum -> out is one op
    assert fused.program.fused_away == {"bn1": "relu1", "sum": "out", "bn2": "sum"}
    assert unfused.program.fused_away == {}
    assert len(fused.program.ops) == len(unfused.program.ops) - 3
    assert {op.name: (op.fused, op.residual) for op in fused.program.ops if op.fused} == {
        "bn1": (("relu1",), False), "bn2": (("sum", "out"), True)}
    rng = np.random.default_rng(0)
    x, y = random_batch(fused, 7, rng)
    a, b = _train(fused, x, y), _train(unfused, x, y)
    assert a[0] == b[0]
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])  # running statistics included
    assert np.array_equal(a[2], b[2])
    # the relu's output and its gradient are those of the unfused build
    for m in (fused, unfused):
        m.init(4)
        m.gradients(x, y, seed=2)
    for layer in ("relu1", "out"):
        assert np.array_equal(fused.activation(layer, 7), unfused.activation(layer, 7))
        assert np.array_equal(fused.activation(layer, 7, grad=True), unfused.activation(layer, 7, grad=True))
    # one tensor less per fusion: less memory for the activations and their gradients
    assert fused.program.activation_size < unfused.program.activation_size


def test_fused_output_is_refused_by_name(build_dir):
    model = cnncc.compile(RESIDUAL, build_dir=build_dir)
    x, y = random_batch(model, 2, np.random.default_rng(1))
    model.gradients(x, y)
    for layer, kind, after in (("bn1", "relu", "relu1"), ("sum", "relu", "out"), ("bn2", "add", "sum")):
        for grad in (False, True):
            with pytest.raises(ValueError, match=rf"output of '{layer}' is not stored: the {kind} '{after}'.*fuse=False"):
                model.activation(layer, 2, grad=grad)
    unfused = cnncc.compile(RESIDUAL, build_dir=build_dir, fuse=False)
    unfused.gradients(x, y)
    assert unfused.activation("bn1", 2).shape == (2, 11, 9, 9)  # every layer's output, unfused


def test_fusion_only_where_the_relu_alone_reads_the_output(build_dir):
    fused = cnncc.compile(SHARED, build_dir=build_dir)
    assert fused.program.fused_away == {"sum": "out", "bn_out": "last"}
    assert fused.program.output is fused.program.layer_outputs["bn_out"]
    unfused = cnncc.compile(SHARED, build_dir=build_dir, fuse=False)
    x, y = random_batch(fused, 5, np.random.default_rng(3))
    a, b = _train(fused, x, y), _train(unfused, x, y)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize("spec, batch, seed", [(RESIDUAL, 6, 5), (RESIDUAL_FORMS, 5, 12)], ids=["relus", "residuals"])
def test_fused_backward_passes_finite_differences(spec, batch, seed, build_dir):
    model = cnncc.compile(_dtype(spec, "float64"), build_dir=build_dir)
    x, y = random_batch(model, batch, np.random.default_rng(seed))
    model.init(2)
    errors = check_gradients(model, x, y, samples=20)
    assert set(errors) == {k for k in model.params if not k.endswith(("running_mean", "running_var"))}
    assert max(errors.values()) < 1e-6, errors


def test_fused_threaded_build_is_bit_identical(build_dir):
    # 9 x 6 x 9 x 9 = 4,374 elements: below the element threshold, so this checks the build;
    # the residual block of test_network.THREADED_SPECS splits its elements over the threads.
    spec = {**RESIDUAL, "input": {"channels": 3, "height": 32, "width": 32}, "name": "fused_threads"}
    threaded = cnncc.compile(spec, build_dir=build_dir, threads=2, cflags=THREADED_FLAGS)
    serial = cnncc.compile(spec, build_dir=build_dir, fuse=False, cflags=THREADED_FLAGS)
    x, y = random_batch(serial, 9, np.random.default_rng(6))
    runs = []
    for threads in (1, 2):
        threaded.set_threads(threads)
        runs.append(_train(threaded, x, y))
    reference = _train(serial, x, y)
    for run in runs:
        assert run[0] == reference[0] and np.array_equal(run[2], reference[2])
        assert all(np.array_equal(run[1][k], reference[1][k]) for k in run[1])


def test_fuse_must_be_a_bool():
    with pytest.raises(ValueError, match="fuse must be True or False"):
        CompileOptions(fuse="no")


def test_quantize_reads_every_output_through_an_unfused_build(build_dir):
    """int8 calibration reads each layer's float output; the fused model is rebuilt unfused for
    it, and both give the same quantized model."""
    fused = cnncc.compile(RESIDUAL, build_dir=build_dir).init(3)
    unfused = cnncc.compile(RESIDUAL, build_dir=build_dir, fuse=False).init(3)
    x = np.random.default_rng(7).normal(size=(16, 3, 9, 9)).astype(np.float32)
    a, b = fused.quantize(x, build_dir=build_dir), unfused.quantize(x, build_dir=build_dir)
    assert np.array_equal(a.predict(x), b.predict(x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_and_dense_relu_epilogues_give_the_unfused_bits(dtype, build_dir):
    spec = _dtype(EPILOGUES, dtype)
    fused = cnncc.compile(spec, build_dir=build_dir, cflags=FLAGS[dtype])
    unfused = cnncc.compile(spec, build_dir=build_dir, fuse=False, cflags=FLAGS[dtype])
    ops = {op.name: op for op in fused.program.ops}
    assert {name: op.fused for name, op in ops.items() if op.fused} == {
        "conv_a": ("conv_a_relu",), "conv_b": ("conv_b_relu",), "conv_c": ("relu_c",), "dw": ("dw_relu",),
        "fc1": ("fc1_relu",), "fc2": ("relu_fc2",)}
    assert fused.program.fused_away == {"conv_c": "relu_c", "fc2": "relu_fc2"}
    assert [op.kind for op in fused.program.ops if op.kind == "relu"] == []
    templates = {name: op.plan.backward_template for name, op in ops.items()}
    assert templates["conv_a"] == "layers/conv2d_pooled_backward" and ops["conv_a"].plan.settings["positive_only"]
    assert templates["conv_b"] == "layers/conv2d_shifted" and not ops["conv_b"].plan.settings["wide"]
    assert templates["conv_c"] == "layers/conv2d_im2col" and templates["dw"] == "layers/conv2d_depthwise"
    assert not ops["conv_b"].plan.settings["dweight_by_dots"]
    # 70 samples: the dense backwards mask their output gradient in two blocks (64 + 6)
    rng = np.random.default_rng(8)
    x, y = random_batch(fused, 70, rng)
    a, b = _train(fused, x, y), _train(unfused, x, y)
    assert a[0] == b[0]
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert np.array_equal(a[2], b[2])
    for m in (fused, unfused):
        m.init(4)
        m.gradients(x, y, seed=2)
    for layer in ("pool_a", "conv_b", "relu_c", "dw", "fc1", "relu_fc2", "fc3"):
        assert np.array_equal(fused.activation(layer, 70), unfused.activation(layer, 70)), layer
        # the relu's own gradient, not the masked one the fused backward works on
        assert np.array_equal(fused.activation(layer, 70, grad=True), unfused.activation(layer, 70, grad=True)), layer
    for layer, relu in fused.program.fused_away.items():
        with pytest.raises(ValueError, match=rf"output of '{layer}' is not stored: the relu '{relu}'"):
            fused.activation(layer, 70)
    assert fused.program.activation_size < unfused.program.activation_size


def test_conv_and_dense_relu_epilogues_pass_finite_differences(build_dir):
    model = cnncc.compile(_dtype(EPILOGUES, "float64"), build_dir=build_dir)
    rng = np.random.default_rng(9)
    x, y = random_batch(model, 5, rng)
    model.init(3)
    # biases off zero: a relu's zeros reach the depthwise conv's padded patches, whose output
    # would then be its bias exactly, on the relu's kink with a zero bias
    for key, value in model.params.items():
        if key.endswith(".bias"):
            value[...] = rng.uniform(0.02, 0.1, value.shape)
    errors = check_gradients(model, x, y, samples=20)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < 1e-6, errors


def test_conv_and_dense_relu_epilogues_on_threads_and_the_portable_backend(build_dir):
    serial = cnncc.compile(EPILOGUES, build_dir=build_dir, fuse=False, cflags=THREADED_FLAGS)
    threaded = cnncc.compile(EPILOGUES, build_dir=build_dir, threads=2, cflags=THREADED_FLAGS)
    portable = cnncc.compile(EPILOGUES, build_dir=build_dir, backend="portable", cflags=FLAGS["float64"])
    portable_unfused = cnncc.compile(EPILOGUES, build_dir=build_dir, backend="portable", fuse=False,
                                     cflags=FLAGS["float64"])
    x, y = random_batch(serial, 9, np.random.default_rng(10))
    reference = _train(serial, x, y)
    for threads in (1, 2):
        threaded.set_threads(threads)
        run = _train(threaded, x, y)
        assert run[0] == reference[0] and np.array_equal(run[2], reference[2])
        assert all(np.array_equal(run[1][k], reference[1][k]) for k in run[1])
    # the portable backend's sums are its own: fused and unfused, the same bits as each other
    # (with contraction off: GCC forms its FMAs from the scalar loops differently in two programs)
    a, b = _train(portable, x, y), _train(portable_unfused, x, y)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    np.testing.assert_allclose(a[2], reference[2], rtol=1e-4, atol=1e-5)


def test_dropout_masks_do_not_depend_on_fusion(build_dir):
    """A dropout's random numbers are keyed on its layer's name (ir.Op.random_stream), not on
    where its tensor lies, which fusion moves: resnet_small (dropout, a depthwise and 1x1 convs
    with their relus, batchnorm and add epilogues) trains to the same bits either way."""
    from pathlib import Path

    spec = str(Path(__file__).resolve().parents[1] / "specs" / "resnet_small.yaml")
    fused = cnncc.compile(spec, build_dir=build_dir)
    unfused = cnncc.compile(spec, build_dir=build_dir, fuse=False)
    assert any(op.kind == "dropout" for op in fused.program.ops) and len(fused.program.ops) < len(unfused.program.ops)
    x, y = random_batch(fused, 6, np.random.default_rng(11))
    a, b = _train(fused, x, y), _train(unfused, x, y)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])




def _same_training(a, b):
    assert a[0] == b[0]
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])  # running statistics included
    assert np.array_equal(a[2], b[2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_residual_epilogues_give_the_unfused_bits(dtype, build_dir):
    spec = _dtype(RESIDUAL_FORMS, dtype)
    fused = cnncc.compile(spec, build_dir=build_dir, cflags=FLAGS[dtype])
    unfused = cnncc.compile(spec, build_dir=build_dir, fuse=False, cflags=FLAGS[dtype])
    assert fused.program.fused_away == RESIDUAL_FUSED
    ops = {op.name: op for op in fused.program.ops}
    assert {name for name, op in ops.items() if op.residual} == {"bn0", "bn_b", "bn_d"}
    assert [t.name for t in ops["bn_b"].inputs] == ["conv_b", "conv_s"]  # after the shortcut conv
    assert [op.name for op in fused.program.ops].index("bn_b") > [op.name for op in fused.program.ops].index("conv_s")
    assert ops["bn_d"].fused == ("add2", "out2") and ops["bn_b"].fused == ("add1",)
    assert ops["bn0"].input_grads == (True, False)  # the residual is the network input
    assert ops["bn_d"].plan.initialised_grads == (True, False)  # relu_a's gradient: add3 writes it first
    assert ops["bn_b"].plan.initialised_grads == (True, True)
    assert not ops["bn_q"].residual and "add_q" in ops
    rng = np.random.default_rng(11)
    x, y = random_batch(fused, 6, rng)
    _same_training(_train(fused, x, y), _train(unfused, x, y))
    for m in (fused, unfused):
        m.init(4)
        m.gradients(x, y, seed=2)
    for layer in ("add0", "add1", "out2", "add3", "relu_a"):
        assert np.array_equal(fused.activation(layer, 6), unfused.activation(layer, 6)), layer
        assert np.array_equal(fused.activation(layer, 6, grad=True), unfused.activation(layer, 6, grad=True)), layer
    for layer in ("bn0", "bn_b", "bn_d"):
        with pytest.raises(ValueError, match=rf"output of '{layer}' is not stored: the add '{RESIDUAL_FUSED[layer]}'"):
            fused.activation(layer, 6)
    assert fused.program.activation_size == unfused.program.activation_size - 3 * 6 * 49 - 4 * 49 - 6 * 49


def test_batchnorm_residual_epilogues_on_threads_and_the_portable_backend(build_dir):
    # 32 x 32 at batch 12: the fused 6-channel batchnorms have 73,728 elements, past the element
    # threshold (PARALLEL_MIN_ELEMENTS), so their channel groups go to the threads
    spec = {**RESIDUAL_FORMS, "input": {"channels": 4, "height": 32, "width": 32}, "name": "residual_threads"}
    spec["layers"] = [dict(layer, kernel=32) if layer.get("name") == "pool" else layer for layer in spec["layers"]]
    serial = cnncc.compile(spec, build_dir=build_dir, fuse=False, cflags=THREADED_FLAGS)
    threaded = cnncc.compile(spec, build_dir=build_dir, threads=2, cflags=THREADED_FLAGS)
    assert threaded.program.fused_away == RESIDUAL_FUSED
    x, y = random_batch(serial, 12, np.random.default_rng(13))
    reference = _train(serial, x, y)
    for threads in (1, 2):
        threaded.set_threads(threads)
        _same_training(_train(threaded, x, y), reference)
    portable = cnncc.compile(RESIDUAL_FORMS, build_dir=build_dir, backend="portable", cflags=FLAGS["float64"])
    portable_unfused = cnncc.compile(RESIDUAL_FORMS, build_dir=build_dir, backend="portable", fuse=False,
                                     cflags=FLAGS["float64"])
    assert portable.program.fused_away == RESIDUAL_FUSED
    x, y = random_batch(portable, 5, np.random.default_rng(14))
    _same_training(_train(portable, x, y), _train(portable_unfused, x, y))


def test_the_ir_listing_and_the_profile_name_what_each_op_computes(build_dir):
    """`cnncc ir` and `cnncc bench --layers` label an op by what it computes (ir.Op.label)."""
    from cnncc.ir import describe

    model = cnncc.compile(RESIDUAL_FORMS, build_dir=build_dir)
    listed = {line.split()[1]: line.split()[2] for line in describe(model.program).splitlines()
              if line.strip()[:1].isdigit() and "->" in line and "(" in line}
    assert listed["bn_d"] == "batchnorm+add+relu" and listed["bn_b"] == "batchnorm+add"
    assert listed["bn_a"] == "batchnorm+relu" and listed["conv0"] == "conv2d" and listed["add3"] == "add"
    assert {op.name: op.label for op in model.program.ops} == {
        name: label for name, label in listed.items() if name in {op.name for op in model.program.ops}}

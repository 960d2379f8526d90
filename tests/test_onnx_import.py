"""ONNX import: round trips of every example spec, graphs written by hand for each supported
operator and attribute (checked against onnxruntime), the refusals (exit status 2, the node named,
nothing written), and corrupt or hostile files (a clear error, quickly)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnncc
import interop_cases
from reference import rel_err
from tools import need_module

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
INSTALL = 'pip install "cnncc[onnx]"'

onnx = need_module("onnx", INSTALL) if os.environ.get("CNNCC_REQUIRE_TOOLS") == "1" else \
    pytest.importorskip("onnx", reason=f"onnx is not installed ({INSTALL})")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnncc.cli  # noqa: E402
import cnncc.onnx  # noqa: E402
from cnncc.onnx.importer import OnnxFileError, UnsupportedModel  # noqa: E402


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnncc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def imported_model(path, build_dir):
    """The compiled cnncc model of an ONNX file, with its weights."""
    spec, weights = cnncc.onnx.load(path)
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",))
    assert set(weights) == set(model.params)
    for key, array in weights.items():
        model.params[key][...] = array
    return model


def onnxruntime_output(path, x):
    ort = need_module("onnxruntime", INSTALL)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def randomised(model, seed=1):
    rng = np.random.default_rng(seed)
    model.init(seed)
    for key, view in model.params.items():
        if key.endswith((".gamma", ".running_var")):
            view[...] = rng.uniform(0.5, 1.5, view.shape)
        elif key.endswith((".beta", ".running_mean", ".bias")):
            view[...] = rng.normal(0, 0.3, view.shape)
    return model


# ---- round trip ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_import_of_export_is_the_same_network(spec, build_dir, tmp_path):
    original = randomised(cnncc.compile(spec, build_dir=build_dir))
    path = tmp_path / "model.onnx"
    cnncc.onnx.export(original, path)
    imported_spec, weights = cnncc.onnx.load(path)
    # the same layers, shapes and parameters; dropout (the identity in an inference graph) is dropped
    before = [(r.name, r.output_shape, r.params) for r in cnncc.check(original.spec).rows if r.type != "dropout"]
    after = [(r.name, r.output_shape, r.params) for r in cnncc.check(imported_spec).rows]
    assert after == before
    assert [l.kind for l in imported_spec.layers] == [l.kind for l in original.spec.layers if l.kind != "dropout"]
    assert set(weights) == set(original.params)
    for key, array in weights.items():
        np.testing.assert_array_equal(array, original.params[key])
    model = imported_model(path, build_dir)
    x = np.random.default_rng(0).normal(size=(3,) + original.input_shape).astype(np.float32)
    # the imported spec has no training sections, so it is built for inference, whose plans may sum
    # in another order than the training build's forward pass: float32 rounding apart
    assert rel_err(model.predict(x), original.predict(x)) <= 1e-5


ROUND_TRIP_FIELDS = {"mnist_autoencoder": ROOT / "specs" / "mnist_autoencoder.yaml", **interop_cases.SPECS}


@pytest.mark.parametrize("case", sorted(ROUND_TRIP_FIELDS))
def test_import_of_export_keeps_every_field_of_the_upsampling_kinds(case, build_dir, tmp_path):
    original = randomised(cnncc.compile(ROUND_TRIP_FIELDS[case], build_dir=build_dir, cflags=("-O1",)))
    cnncc.onnx.export(original, tmp_path / "model.onnx")
    imported, weights = cnncc.onnx.load(tmp_path / "model.onnx")
    layers = [(l.name, l.kind, l.layer.values(), l.inputs) for l in imported.layers]
    assert layers == [(l.name, l.kind, l.layer.values(), l.inputs) for l in original.spec.layers]
    model = imported_model(tmp_path / "model.onnx", build_dir)
    x = np.random.default_rng(0).normal(size=(2,) + original.input_shape).astype(np.float32)
    assert rel_err(model.predict(x), original.predict(x)) <= 1e-5  # (as above)


def test_cnncc_import_writes_a_readable_spec_and_loadable_weights(build_dir, tmp_path):
    original = randomised(cnncc.compile(ROOT / "specs" / "resnet_small.yaml", build_dir=build_dir))
    cnncc.onnx.export(original, tmp_path / "r.onnx")
    done = cli("import", "r.onnx", "-o", "r.yaml", "--weights", "r.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "r.yaml").read_text()
    assert "- {name: block1_add, type: add, inputs: [block1_bn2, stem_relu]}" in text
    assert "- {name: down, type: conv2d, filters: 32, kernel: 3, stride: 2, padding: same, activation: relu}" in text
    model = cnncc.compile(tmp_path / "r.yaml", build_dir=build_dir, cflags=("-O1",)).load(tmp_path / "r.npz")
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    assert rel_err(model.predict(x), original.predict(x)) <= 1e-5  # (as above)


# ---- graphs written by hand ----------------------------------------------------------------
def graph_file(tmp_path, nodes, shape, initializers=(), opset=17, dtype=TensorProto.FLOAT, name="hand"):
    """A one-input, one-output model (output: the last node's first output, its shape left to
    inference), checked by onnx."""
    x = helper.make_tensor_value_info("x", dtype, ["N", *shape])
    y = helper.make_value_info(nodes[-1].output[0], helper.make_tensor_type_proto(dtype, None))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers]
    graph = helper.make_graph(nodes, name, [x], [y], inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(model))
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def agrees_with_onnxruntime(path, shape, build_dir, tol=1e-5):
    model = imported_model(path, build_dir)
    x = np.random.default_rng(5).normal(size=(2, *shape)).astype(np.float32)
    expected = onnxruntime_output(path, x)
    assert rel_err(model.predict(x).reshape(expected.shape), expected) <= tol
    return model


RNG = np.random.default_rng(11)
W33 = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
B4 = RNG.normal(size=4).astype(np.float32)


@pytest.mark.parametrize("attrs, padding", [
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, "same"),  # width 6: 0 left, 1 right, as cnncc's 'same'
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 1, 1, 0)),  # the odd one at the start instead
    ({"auto_pad": "VALID"}, (0, 0)),
    ({"pads": [0, 2, 1, 0]}, (0, 2, 1, 0)),  # ONNX: top, left, bottom, right, as cnncc's four values
    ({"pads": [1, 2, 1, 2], "dilations": [2, 1]}, (1, 2)),
])
def test_conv_padding_attributes(attrs, padding, tmp_path, build_dir):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="/features/conv/Conv", **attrs)
    path = graph_file(tmp_path, [node], (3, 7, 6), [("w", W33), ("b", B4)])
    model = agrees_with_onnxruntime(path, (3, 7, 6), build_dir)
    layer = model.spec.layers[0]
    assert layer.name == "features_conv"
    assert layer.layer.padding == padding


def test_pad_node_folds_into_the_conv_and_pool_after_it(tmp_path, build_dir):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["c"], name="conv"),
             helper.make_node("Pad", ["c", "pads2", "zero"], ["q"], name="pad2"),
             helper.make_node("AveragePool", ["q"], ["a"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Pad", ["a", "pads3", "low"], ["r"], name="pad3"),
             helper.make_node("MaxPool", ["r"], ["m"], name="maxpool", kernel_shape=[2, 2])]
    inits = [("w", W33), ("pads", np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64)),
             ("pads2", np.array([0, 0, 0, 1, 0, 0, 1, 0], np.int64)), ("zero", np.array(0, np.float32)),
             ("pads3", np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64)), ("low", np.array(-np.inf, np.float32))]
    model = agrees_with_onnxruntime(graph_file(tmp_path, nodes, (3, 7, 6), inits), (3, 7, 6), build_dir)
    assert [l.kind for l in model.spec.layers] == ["conv2d", "avgpool2d", "maxpool2d"]
    assert model.spec.layers[0].layer.padding == (1, 0, 0, 2)
    assert model.spec.layers[1].layer.padding == (0, 1, 1, 0)


def test_gemm_transb_alpha_beta_and_matmul_add(tmp_path, build_dir):
    w1 = RNG.normal(size=(12, 5)).astype(np.float32)  # transB=0: [K, M]
    w2 = RNG.normal(size=(5, 4)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["g"], name="fc1", alpha=0.5, beta=2.0),
             helper.make_node("LeakyRelu", ["g"], ["l"], name="act", alpha=0.2),
             helper.make_node("MatMul", ["l", "w2"], ["mm"], name="fc2"),
             helper.make_node("Add", ["mm", "b2"], ["y"], name="fc2_bias"),
             helper.make_node("Softmax", ["y"], ["s"], name="soft", axis=-1)]
    inits = [("w1", w1), ("b1", RNG.normal(size=5).astype(np.float32)), ("w2", w2),
             ("b2", RNG.normal(size=4).astype(np.float32))]
    model = agrees_with_onnxruntime(graph_file(tmp_path, nodes, (3, 4), inits), (3, 4), build_dir)
    kinds = [(l.name, l.kind) for l in model.spec.layers]
    assert kinds == [("flat", "flatten"), ("fc1", "dense"), ("act", "leaky_relu"), ("fc2", "dense")]
    assert model.spec.layers[3].layer.activation == "softmax" and model.spec.layers[3].layer.bias
    assert model.spec.layers[2].layer.alpha == 0.2


def test_batchnorm_concat_sum_and_a_folded_reshape(tmp_path, build_dir):
    c = 3
    stats = [("g", RNG.uniform(0.5, 1.5, c)), ("be", RNG.normal(size=c)), ("mu", RNG.normal(size=c)),
             ("var", RNG.uniform(0.5, 1.5, c))]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["bn"], name="bn", epsilon=1e-3),
             helper.make_node("Tanh", ["bn"], ["t"], name="t"), helper.make_node("Sigmoid", ["bn"], ["s"], name="s"),
             helper.make_node("Sum", ["bn", "t", "s"], ["sum"], name="sum"),
             helper.make_node("Concat", ["sum", "t"], ["cat"], name="cat", axis=1),
             helper.make_node("Identity", ["cat"], ["id"], name="id"),
             helper.make_node("Shape", ["id"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero1"], ["batch1"], name="unsqueeze"),
             helper.make_node("Concat", ["batch1", "minus1"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["id", "target"], ["flat"], name="view"),
             helper.make_node("Dropout", ["flat"], ["y"], name="drop")]
    inits = [(k, v.astype(np.float32)) for k, v in stats] + [
        ("zero", np.array(0, np.int64)), ("zero1", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64))]
    model = agrees_with_onnxruntime(graph_file(tmp_path, nodes, (c, 4), inits), (c, 4), build_dir)
    assert [l.kind for l in model.spec.layers] == ["batchnorm", "tanh", "sigmoid", "add", "concat", "flatten"]
    assert model.spec.layers[0].layer.eps == 1e-3


@pytest.mark.parametrize("opset", range(13, 22))
def test_global_pool_as_reduce_mean_and_squeeze_in_every_opset(opset, tmp_path, build_dir):
    axes = [("axes", np.array([2, 3], np.int64))] if opset >= 18 else []
    squeeze_axes = [("sq", np.array([2, 3], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r", "axes"] if opset >= 18 else ["r"], ["m"], name="mean",
                              **({} if opset >= 18 else {"axes": [2, 3]})),
             helper.make_node("Squeeze", ["m", "sq"], ["y"], name="squeeze")]
    path = graph_file(tmp_path, nodes, (3, 5, 5), [("w", W33)] + axes + squeeze_axes, opset=opset)
    model = agrees_with_onnxruntime(path, (3, 5, 5), build_dir)
    assert [(l.kind, getattr(l.layer, "activation", None)) for l in model.spec.layers] == [
        ("conv2d", "relu"), ("global_avgpool", None)]


SCALES = {name: np.array(v, np.float32) for name, v in
          (("s23", [1, 1, 2, 3]), ("s32", [1, 1, 3, 2]), ("s22", [1, 1, 2, 2]), ("s2", [2, 2]),
           ("s15", [1, 1, 1.5, 2]), ("sc2", [1, 2, 2, 2]))}
WT = RNG.normal(size=(2, 3, 3, 2)).astype(np.float32)  # ConvTranspose: (c_in, filters/group, kh, kw)


def _resize(scales, name="up", **attrs):
    return helper.make_node("Resize", ["x", "", scales], ["y"], name=name, **attrs)


@pytest.mark.parametrize("node, opset, fields", [
    (_resize("s23", mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 13,
     {"scale_factor": [2, 3]}),  # PyTorch's nearest, as torch.onnx writes it
    (_resize("s32", mode="nearest"), 17, {"scale_factor": [3, 2]}),  # ONNX's defaults: half_pixel, round
    (_resize("s22", mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), 21,
     {"scale_factor": 2, "mode": "bilinear"}),
    (_resize("s32", mode="linear"), 17, {"scale_factor": [3, 2], "mode": "bilinear"}),  # half_pixel
    (_resize("s2", mode="linear", axes=[2, 3]), 18, {"scale_factor": 2, "mode": "bilinear"}),
], ids=["nearest_asymmetric_floor", "nearest_defaults", "linear_pytorch_half_pixel", "linear_half_pixel", "axes"])
def test_resize_forms_agree_with_onnxruntime(node, opset, fields, tmp_path, build_dir):
    inits = [(key, SCALES[key]) for key in node.input if key in SCALES]
    path = graph_file(tmp_path, [node], (2, 4, 5), inits, opset=opset)
    spec, _ = cnncc.onnx.load(path)
    assert [(l.kind, {k: v for k, v in l.layer.values().items()}) for l in spec.layers] == \
        [("upsample2d", {"scale_factor": tuple(np.broadcast_to(fields["scale_factor"], 2)),
                         "mode": fields.get("mode", "nearest")})]
    agrees_with_onnxruntime(path, (2, 4, 5), build_dir)


def test_resize_sizes_from_a_shape_subgraph(tmp_path, build_dir):
    """TorchScript's form for a size given per axis: Shape -> Slice (batch and channels) -> Concat."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel")]
    inits = [("zero", np.array([0], np.int64)), ("two", np.array([2], np.int64)), ("hw", np.array([8, 15], np.int64))]
    path = graph_file(tmp_path, nodes, (2, 4, 5), inits)
    spec, _ = cnncc.onnx.load(path)
    assert spec.layers[0].layer.scale_factor == (2, 3) and spec.layers[0].layer.mode == "bilinear"
    agrees_with_onnxruntime(path, (2, 4, 5), build_dir)


def test_conv_transpose_and_global_max_forms_agree_with_onnxruntime(tmp_path, build_dir):
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["a"], name="up", strides=[2, 1], auto_pad="VALID",
                              output_padding=[1, 0]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("ConvTranspose", ["b", "wt2"], ["c"], name="up2", pads=[1, 2, 1, 2], group=3,
                              dilations=[2, 2]),
             helper.make_node("ReduceMax", ["c"], ["y"], name="gmax", axes=[2, 3], keepdims=0)]
    inits = [("wt", WT), ("bt", B4[:3]), ("wt2", RNG.normal(size=(3, 2, 3, 3)).astype(np.float32))]
    path = graph_file(tmp_path, nodes, (2, 4, 5), inits, opset=13)
    spec, _ = cnncc.onnx.load(path)
    assert [(l.kind, l.layer.activation_kind if l.kind == "conv_transpose2d" else None) for l in spec.layers] == \
        [("conv_transpose2d", "relu"), ("conv_transpose2d", None), ("global_maxpool", None)]
    assert spec.layers[1].layer.groups == 3 and spec.layers[1].layer.padding == (1, 2)
    agrees_with_onnxruntime(path, (2, 4, 5), build_dir)
    pool = [helper.make_node("GlobalMaxPool", ["x"], ["p"], name="gmp"), helper.make_node("Flatten", ["p"], ["y"])]
    path = graph_file(tmp_path, pool, (3, 7), name="signal")  # a signal: N x C x L
    assert [l.kind for l in cnncc.onnx.load(path)[0].layers] == ["global_maxpool"]
    agrees_with_onnxruntime(path, (3, 7), build_dir)


def test_local_functions_are_inlined(tmp_path, build_dir):
    """What the dynamo exporter may emit: the network's blocks as ONNX local functions."""
    body = [helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["b"])]
    block = helper.make_function("blocks", "ConvRelu", ["a", "w"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("ConvRelu", ["x", "w"], ["y"], name="block1", domain="blocks")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [numpy_helper.from_array(W33, "w")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("blocks", 1)]
    model = helper.make_model(graph, functions=[block], opset_imports=opsets, ir_version=8)
    path = tmp_path / "functions.onnx"
    onnx.save(model, str(path))
    imported = agrees_with_onnxruntime(path, (3, 5, 5), build_dir)
    assert [(l.kind, l.layer.activation) for l in imported.spec.layers] == [("conv2d", "relu")]


def test_ceil_mode_is_accepted_where_it_changes_nothing(tmp_path, build_dir):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    agrees_with_onnxruntime(graph_file(tmp_path, [node], (2, 6, 4)), (2, 6, 4), build_dir)


def test_names_are_sanitised_and_collisions_resolved(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/block.1/act/Relu"),
             helper.make_node("Tanh", ["a"], ["b"], name="block_1-act"),
             helper.make_node("Sigmoid", ["b"], ["c"], name="9input"),
             helper.make_node("Relu", ["c"], ["d"], name="input"),
             helper.make_node("Relu", ["d"], ["e"], name="x" * 80)]
    spec, _ = cnncc.onnx.load(graph_file(tmp_path, nodes, (2, 3), name="my-net"))
    assert [l.name for l in spec.layers] == ["block_1_act", "block_1_act_2", "n9input", "input_2", "x" * 64]
    assert spec.name == "my_net"


# ---- refusals ------------------------------------------------------------------------------
REFUSED = [
    ([helper.make_node("Erf", ["x"], ["y"], name="erf")], "node 'erf' (Erf, inputs: x): this operator on the "
                                                          "network's data is not supported; cnncc supports Conv"),
    ([helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
     "count_include_pad=0 with padding"),
    ([helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
     "ceil_mode=1 adds a partial window at the end of an axis of size 5"),
    ([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=3)], "Softmax along axis 3"),
    ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="relu6")], "(Clip, inputs: x, lo, hi)"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])],
     "weight of shape [4, 3, 3, 3] with group 1 does not fit an input of 2 channels"),
    ([_resize("s22", mode="cubic")], "node 'up' (Resize, inputs: x, <none>, s22): mode cubic"),
    ([_resize("s22", mode="linear", coordinate_transformation_mode="align_corners")],
     "mode linear with coordinate_transformation_mode align_corners; cnncc supports Resize of an image by integer"),
    # asymmetric, rounded: o/s = k + r/s goes to k + 1 once r/s > 1/2 (at scales from 3), not o // s
    ([_resize("s22", mode="nearest", coordinate_transformation_mode="asymmetric")],
     "mode nearest with coordinate_transformation_mode asymmetric and nearest_mode round_prefer_floor"),
    ([_resize("s15", mode="nearest")], "scales [1.5, 2.0] of the height and width"),
    ([_resize("sc2", mode="nearest")], "resize the batch or the channels"),
    ([helper.make_node("ConvTranspose", ["x", "wt"], ["y"], name="ct", pads=[0, 1, 1, 0])],
     "node 'ct' (ConvTranspose, inputs: x, wt): pads [0, 1, 1, 0], different at the two ends of an axis"),
    ([helper.make_node("ConvTranspose", ["x", "wt"], ["y"], name="ct", output_shape=[6, 8])],
     "an output_shape attribute; cnncc supports ConvTranspose with explicit pads"),
]


@pytest.mark.parametrize("nodes, message", REFUSED, ids=["op", "count_include_pad", "ceil_mode", "softmax_axis",
                                                          "clip", "conv_channels", "resize_cubic",
                                                          "resize_align_corners", "resize_nearest_rounding",
                                                          "resize_fraction", "resize_channels",
                                                          "conv_transpose_pads", "conv_transpose_output_shape"])
def test_unsupported_graphs_exit_2_naming_the_node_and_write_nothing(nodes, message, tmp_path, capsys, monkeypatch):
    inits = [("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32)), ("w", W33), ("wt", WT),
             *SCALES.items()]
    inits = [(k, v) for k, v in inits if any(k in n.input for n in nodes)]
    path = graph_file(tmp_path, nodes, (2, 5, 6), inits)
    with pytest.raises(UnsupportedModel) as info:
        cnncc.onnx.load(path)
    assert message in str(info.value)
    args = ("import", path, "-o", "out.yaml", "--weights", "out.npz")
    if nodes is REFUSED[0][0]:  # one refusal through a real `python -m cnncc` process
        done = cli(*args, cwd=tmp_path)
        status, stderr = done.returncode, done.stderr
    else:  # the others through the same main() in this process (an interpreter start each cost 1.7 s)
        monkeypatch.chdir(tmp_path)
        status, stderr = cnncc.cli.main([str(a) for a in args]), capsys.readouterr().err
    assert status == 2 and message in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_integer_input_and_opset_12_are_refused(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    with pytest.raises(UnsupportedModel, match="not a float32 or float64 tensor"):
        cnncc.onnx.load(graph_file(tmp_path, [node], (2, 3), dtype=TensorProto.INT32))
    with pytest.raises(UnsupportedModel, match="opset 12; cnncc imports opsets 13 to 21"):
        cnncc.onnx.load(graph_file(tmp_path, [node], (2, 3), opset=12))


# ---- corrupt and hostile files -------------------------------------------------------------
def quick_error(path, message):
    start = time.monotonic()
    with pytest.raises((OnnxFileError, UnsupportedModel)) as info:
        cnncc.onnx.load(path)
    assert message in str(info.value)
    assert time.monotonic() - start < 5


def test_truncated_and_garbage_files(tmp_path):
    good = graph_file(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="c")], (3, 5, 5), [("w", W33)])
    data = good.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    quick_error(tmp_path / "cut.onnx", "not an ONNX model")
    (tmp_path / "junk.onnx").write_bytes(os.urandom(4096))
    quick_error(tmp_path / "junk.onnx", "not an ONNX model")
    quick_error(tmp_path / "missing.onnx", "cannot read")
    done = cli("import", "cut.onnx", "-o", "o.yaml", "--weights", "o.npz", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and not (tmp_path / "o.yaml").exists()


def _with_weight(tmp_path, tensor, name="bad"):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def raw_tensor(dims, raw: bytes | None):
    """A float tensor "w" declaring `dims`, whatever data it holds (onnx's helpers refuse a mismatch)."""
    tensor = TensorProto()
    tensor.name, tensor.data_type = "w", TensorProto.FLOAT
    tensor.dims.extend(dims)
    if raw is not None:
        tensor.raw_data = raw
    return tensor


def test_huge_declared_tensors_are_refused_before_anything_is_allocated(tmp_path):
    huge = raw_tensor([1 << 20, 1 << 20, 3, 3], b"")
    quick_error(_with_weight(tmp_path, huge), "declares 9,895,604,649,984 elements")
    short = raw_tensor([4, 3, 3, 3], b"\0" * 16)
    quick_error(_with_weight(tmp_path, short, "short"), "holds 16 bytes")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_model_directory_is_refused(location, tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tensor = raw_tensor([4, 3, 3, 3], None)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "432")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    quick_error(_with_weight(model_dir, tensor), "lies outside the model's directory")


def test_external_data_beside_the_model_is_read(tmp_path, build_dir):
    tensor = numpy_helper.from_array(W33, "w")
    data = tensor.raw_data
    (tmp_path / "w.bin").write_bytes(b"\0" * 8 + data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "8"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    spec, weights = cnncc.onnx.load(_with_weight(tmp_path, tensor, "ext"))
    np.testing.assert_array_equal(weights["c.weight"], W33)
    (tmp_path / "w.bin").write_bytes(data[:100])
    quick_error(tmp_path / "ext.onnx", "fewer than offset 8 + length 432")


def test_a_local_function_bomb_is_refused_before_inlining(tmp_path):
    functions = [onnx.helper.make_function("bomb", "f0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                           [helper.make_opsetid("", 17)])]
    for level in range(1, 40):  # each calls the one below twice: 2**39 Relus once inlined
        body = [helper.make_node(f"f{level - 1}", ["a"], ["m"], domain="bomb"),
                helper.make_node(f"f{level - 1}", ["m"], ["b"], domain="bomb")]
        functions.append(onnx.helper.make_function("bomb", f"f{level}", ["a"], ["b"], body,
                                                   [helper.make_opsetid("", 17), helper.make_opsetid("bomb", 1)]))
    graph = helper.make_graph([helper.make_node("f39", ["x"], ["y"], domain="bomb")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=functions,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bomb", 1)])
    (tmp_path / "bomb.onnx").write_bytes(model.SerializeToString())
    quick_error(tmp_path / "bomb.onnx", "local functions expand to 549,755,813,888 nodes")


def test_importing_cnncc_needs_neither_onnx_nor_torch_and_a_missing_extra_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n"
            "import cnncc, cnncc.onnx\n"
            "try:\n    cnncc.onnx.load('x.onnx')\nexcept ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "needs the Python package 'onnx', which is not installed: pip install \"cnncc[onnx]\"" in done.stdout

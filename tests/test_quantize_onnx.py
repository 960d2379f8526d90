"""The independent check of the int8 path: QuantizedModel exported to ONNX and run by onnxruntime
(CPUExecutionProvider), compared with QuantizedModel.predict in output quantization steps.

- "fixed_point" form (TFLite's requantization in ONNX integer operators): end to end, at least
  99.9% of output values within one step (the issue's criterion), for the example specs the int8
  path takes and the kernel cases (strides, same padding, dilation, groups and depthwise, padded
  pools, residual add and concat of different scales, sigmoid, tanh, leaky_relu).
- Both forms op by op (each op's ONNX nodes fed the integer reference's own inputs): every value
  within one step. The "float" form (QLinearConv, QDQ; onnxruntime's float requantization) differs
  by ±1 where TFLite's double rounding does; end to end those differences compound through the
  layers, beyond one step on some values, so its end-to-end figures are printed, not asserted.

Run with -s to see the figures (values, equal, ±1, beyond) the README records.
"""
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cnncc
from cnncc.quantize import QuantizeError
from quant_cases import ADD_CONCAT_TABLES, int8_case, random_int8, single_spec
from tools import need_module

SPECS = Path(__file__).resolve().parent.parent / "specs"
EXAMPLES = ["lenet5", "mnist_seed", "resnet8", "ds_cnn", "signal1d"]
SAMPLES = 64



CASES = {
    "strided_dilated_grouped": single_spec((4, 13, 11), {"name": "conv", "type": "conv2d", "filters": 6, "kernel": [3, 2],
                                                     "stride": [2, 1], "dilation": [1, 2], "padding": [1, 2],
                                                     "groups": 2, "activation": "relu"}),
    "same_padding": single_spec((3, 10, 9), {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 4, "stride": 2,
                                         "padding": "same", "bias": False}),
    "depthwise_bn_relu": single_spec((6, 11, 9), {"name": "dw", "type": "conv2d", "filters": 6, "groups": 6, "kernel": 3,
                                              "padding": "same", "stride": 2, "bias": False},
                                 {"name": "bn", "type": "batchnorm"}, {"name": "act", "type": "relu"}),
    "padded_pools": single_spec((3, 9, 10), {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 1},
                            {"name": "mp", "type": "maxpool2d", "kernel": 3, "stride": 1, "padding": 1},
                            {"name": "ap", "type": "avgpool2d", "kernel": 3, "stride": 2, "padding": 1},
                            {"name": "ap2", "type": "avgpool2d", "kernel": [3, 2], "stride": 1, "padding": "same"},
                            {"name": "ap4", "type": "avgpool2d", "kernel": 2}),
    "add_concat_tables": ADD_CONCAT_TABLES,
    "signal": single_spec((2, 30), {"name": "conv", "type": "conv1d", "filters": 3, "kernel": 3, "dilation": 2,
                                "padding": 2},
                      {"name": "mp", "type": "maxpool1d", "kernel": 3, "stride": 2, "padding": 1},
                      {"name": "ap", "type": "avgpool1d", "kernel": 2}, {"type": "flatten"},
                      {"type": "dropout", "rate": 0.3}, {"name": "fc", "type": "dense", "units": 6,
                                                         "activation": "tanh"}),
}


@pytest.fixture(scope="module")
def ort():
    return need_module("onnxruntime", 'pip install "cnncc[onnx]"')


def _session(ort, proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _steps(a, b) -> dict:
    """How far apart two arrays of int8 values are: counts of equal, ±1 and farther values."""
    d = np.abs(a.astype(np.int64) - b.astype(np.int64)).ravel()
    return {"values": int(d.size), "equal": int((d == 0).sum()), "one": int((d == 1).sum()),
            "beyond": int((d > 1).sum())}


def _end_to_end(ort, q, x, requantize) -> dict:
    from cnncc.quantize.onnx_export import to_proto

    y = _session(ort, to_proto(q, requantize=requantize)).run(None, {"input": x})[0]
    expected = q.predict(x)
    assert y.shape == expected.shape and y.dtype == np.float32
    step = q.values.scales[q.graph.output]
    # both are dequantized int8: back to integers (their float rounding is far below a step)
    return _steps(np.rint(y / step), np.rint(expected / step))


def _op_by_op(ort, q, x, requantize) -> dict:
    """Each op's nodes alone, fed the integer reference's inputs of that op: every value within a step."""
    import onnx.utils

    from cnncc.quantize.onnx_export import to_proto

    proto = to_proto(q, requantize=requantize)
    for name, tensor in q.graph.tensors.items():  # the cut points, typed for the extractor
        proto.graph.value_info.append(onnx.helper.make_tensor_value_info(f"{name}_q", onnx.TensorProto.INT8,
                                                                         ["N", *tensor.shape]))
    extractor = onnx.utils.Extractor(proto)
    tensors = q.reference(q.quantize_input(x))
    total = {"values": 0, "equal": 0, "one": 0, "beyond": 0}
    for op in q.graph.ops:
        names = list(dict.fromkeys(op.inputs))
        sub = extractor.extract_model([f"{name}_q" for name in names], [f"{op.output}_q"])
        feeds = {f"{name}_q": tensors[name].reshape(len(x), *q.graph.tensors[name].shape) for name in names}
        got = _session(ort, sub).run(None, feeds)[0].reshape(len(x), -1)
        counts = _steps(got, tensors[op.output])
        assert counts["beyond"] == 0, f"op {op.name} ({op.kind}): {counts}"
        total = {k: total[k] + counts[k] for k in total}
    return total


def _check(ort, name, q, x):
    fixed = _end_to_end(ort, q, x, "fixed_point")
    assert fixed["equal"] + fixed["one"] >= 0.999 * fixed["values"], f"{name}: {fixed}"
    figures = {"fixed_point end to end": fixed, "fixed_point op by op": _op_by_op(ort, q, x, "fixed_point"),
               "float op by op": _op_by_op(ort, q, x, "float"), "float end to end": _end_to_end(ort, q, x, "float")}
    print(f"\n{name}: " + "; ".join(f"{what} {counts}" for what, counts in figures.items()))


def _calibrated(name, build_dir):
    """An example spec's int8 model (He-initialised weights, calibrated on normal noise) and inputs."""
    model = cnncc.compile(SPECS / f"{name}.yaml", build_dir=build_dir).init(0)
    x = np.random.default_rng(0).normal(size=(2 * SAMPLES, *model.input_shape)).astype(np.float32)
    return model.quantize(x[:SAMPLES], build_dir=build_dir), x[SAMPLES:]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_specs_agree_with_onnxruntime(name, ort, build_dir):
    q, x = _calibrated(name, build_dir)
    _check(ort, name, q, x)


@pytest.mark.parametrize("name", CASES)
def test_int8_kernel_cases_agree_with_onnxruntime(name, ort, build_dir):
    q = int8_case(CASES[name], build_dir)
    # inputs on the input's quantization grid, across its whole range (the ranges are random)
    s, z = q.values.scales[q.graph.input], q.values.zero_points[q.graph.input]
    x = (s * (random_int8(q.input_shape, SAMPLES).astype(np.float64) - z)).astype(np.float32)
    _check(ort, name, q, x)


def test_the_file_passes_the_full_check_and_refusals_name_the_layer(ort, build_dir, tmp_path):
    import onnx

    q = int8_case(CASES["add_concat_tables"], build_dir)
    for requantize in ("float", "fixed_point"):
        path = q.export_onnx(tmp_path / f"{requantize}.onnx", requantize=requantize)
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        assert {entry.domain for entry in proto.opset_import} == {""} and proto.opset_import[0].version == 17
        assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["fc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed_point.onnx", "float.onnx"]  # no temporaries
    from cnncc.quantize.onnx_export import to_proto

    x = (q.values.scales["input"] * (random_int8(q.input_shape, 8).astype(np.float64) -
                                     q.values.zero_points["input"])).astype(np.float32)
    for opset in (13, 21):  # the float exporter's range
        y = _session(ort, to_proto(q, opset, "fixed_point")).run(None, {"input": x})[0]
        assert np.array_equal(np.rint(y / q.values.scales["fc"]), np.rint(q.predict(x) / q.values.scales["fc"]))
    with pytest.raises(ValueError, match="requantize must be one of float, fixed_point"):
        q.export_onnx(tmp_path / "x.onnx", requantize="double")
    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        q.export_onnx(tmp_path / "x.onnx", opset=11)
    # an op kind the exporter has no form for: refused, naming the layers, before anything is written
    ops = tuple(replace(op, function="softplus") if op.name == "sig" else op for op in q.graph.ops)
    odd = SimpleNamespace(graph=replace(q.graph, ops=ops), values=q.values, layout=q.layout, spec=q.spec)
    from cnncc.quantize.onnx_export import export_onnx

    with pytest.raises(QuantizeError, match=r"layer 'sig' \(int8 lut softplus\): no faithful ONNX int8 form"):
        export_onnx(odd, tmp_path / "odd.onnx")
    assert not (tmp_path / "odd.onnx").exists()


# the Cortex-M4 of the board (templates/boards/mps2-an386), optimised for size
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-std=c99",
            "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror"]
DS_CNN_FLASH_TARGET = 40_000  # the target: weights plus code for DS-CNN under 40 KB


def test_ds_cnn_int8_weights_and_code_fit_the_cortex_m4_target(build_dir, tmp_path):
    """The emitted model (NAME.c: the kernels; NAME_weights.c: the const blobs) compiled for the
    Cortex-M4: the weights' bytes are what `cnncc check --int8` predicts, and weights plus code
    are under the target. main.c (stdio, float boundary, the static arena) is the example host
    program, not counted."""
    import subprocess

    from cnncc.quantize.cli import int8_figures
    from cnncc.quantize.emit import emit_int8
    from tools import need_command

    gcc = need_command("arm-none-eabi-gcc", "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
    size = need_command("arm-none-eabi-size", "apt-get install binutils-arm-none-eabi")
    spec = SPECS / "ds_cnn.yaml"
    q, _ = _calibrated("ds_cnn", build_dir)  # the zero points are constants of the code: realistic ones
    q.save(tmp_path / "q.npz")
    emit_int8(spec, tmp_path / "q.npz", tmp_path / "out")
    figures = {}
    for name in ("ds_cnn", "ds_cnn_weights"):
        obj = tmp_path / f"{name}.o"
        built = subprocess.run([gcc, *M4_FLAGS, "-c", str(tmp_path / "out" / f"{name}.c"), "-o", str(obj)],
                               capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        out = subprocess.run([size, str(obj)], capture_output=True, text=True, check=True).stdout
        text, data, bss = map(int, out.splitlines()[1].split()[:3])  # Berkeley format: text (with rodata) data bss
        figures[name] = {"text": text, "data": data, "bss": bss}
    print(f"\nds_cnn int8 on the Cortex-M4 (-Os): {figures}")
    assert figures["ds_cnn_weights"] == {"text": int8_figures(spec)["int8_weight_bytes"], "data": 0, "bss": 0}
    assert figures["ds_cnn"]["data"] == figures["ds_cnn"]["bss"] == 0  # the arena is the caller's
    assert figures["ds_cnn_weights"]["text"] + figures["ds_cnn"]["text"] < DS_CNN_FLASH_TARGET

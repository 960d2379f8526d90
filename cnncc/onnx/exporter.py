"""Model -> ONNX: every layer kind as standard ONNX operators, the weights as initializers.

Tensor and node names are the spec's layer names (`conv1`, its weight `conv1.weight`); a fused
activation is its own node, `conv1_relu`, as in cnncc's IR, writing the layer's output while the
conv writes `conv1_pre_relu`. The graph's input is `input` [N, *input_shape] with a symbolic
batch N. Inference semantics: batchnorm uses its running statistics, dropout is the identity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..check import check_net
from ..extras import require
from ..files import write_bytes_atomically
from ..layers.formulas import pads_per_side

onnx = require("onnx", "onnx", "ONNX export")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 21, 17
ELEMENT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}
ACTIVATION_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh",
                  "softmax": "Softmax", "linear": "Identity"}
FUSED_LEAKY_SLOPE = 0.01  # a fused `activation: leaky_relu` has the default slope (as in cnncc's IR)


class _Graph:
    """The nodes and initializers being written, with the model's weights at hand."""

    def __init__(self, model):
        self.params = model.params
        self.dtype = np.dtype(model.program.dtype)
        self.nodes, self.initializers = [], []

    def node(self, op, inputs, output, name, **attributes):
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attributes))

    def weight(self, key):
        """The initializer named like the parameter, `conv1.weight`."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(self.params[key], self.dtype), key))
        return key

    def constant(self, name, value, dtype=None):
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name


def _float32_exact(value) -> bool:
    return float(np.float32(value)) == float(value)


def _activation(graph, kind, source, output, name, alpha=FUSED_LEAKY_SLOPE):
    if kind == "leaky_relu" and graph.dtype == np.float64 and not _float32_exact(alpha):
        # ONNX's attributes are float32: a float64 model's slope goes in whole as PRelu's slope tensor
        graph.node("PRelu", [source, graph.constant(f"{name}.slope", [alpha])], output, name)
        return
    attributes = {"alpha": float(alpha)} if kind == "leaky_relu" else {"axis": 1} if kind == "softmax" else {}
    graph.node(ACTIVATION_OPS[kind], [source], output, name, **attributes)


def window_attributes(checked) -> dict:
    """kernel_shape, strides and pads (ONNX order: begins then ends) of a conv or pool on its input."""
    k = checked.layer
    (top, bottom), (left, right) = pads_per_side(k.padding, checked.input_shapes[0], k.kernel, k.stride,
                                                 getattr(k, "dilation", (1, 1)))
    if len(checked.input_shapes[0]) == 2:  # a signal: only the width axis exists in ONNX
        return {"kernel_shape": [k.kernel[1]], "strides": [k.stride[1]], "pads": [left, right]}
    return {"kernel_shape": list(k.kernel), "strides": list(k.stride), "pads": [top, left, bottom, right]}


def _conv(graph, checked, inputs, output):
    k, name = checked.layer, checked.name
    dilation = [k.dilation[1]] if len(checked.input_shapes[0]) == 2 else list(k.dilation)
    weights = [graph.weight(f"{name}.weight")] + ([graph.weight(f"{name}.bias")] if k.bias else [])
    graph.node("Conv", inputs + weights, output, name, group=k.groups, dilations=dilation, **window_attributes(checked))


def _conv_transpose(graph, checked, inputs, output):
    # the weight layout (c_in, filters/groups, kh, kw) is ONNX's too; cnncc's padding crops both sides alike
    k, name = checked.layer, checked.name
    ph, pw = k.padding
    weights = [graph.weight(f"{name}.weight")] + ([graph.weight(f"{name}.bias")] if k.bias else [])
    graph.node("ConvTranspose", inputs + weights, output, name, kernel_shape=list(k.kernel), strides=list(k.stride),
               pads=[ph, pw, ph, pw], output_padding=list(k.output_padding), dilations=list(k.dilation),
               group=k.groups)


def _upsample(graph, checked, inputs, output):
    # nearest: in[o // s] is ONNX's asymmetric coordinates (x = o/s), rounded down; bilinear with
    # align_corners=False is PyTorch's half-pixel rule, which ONNX names pytorch_half_pixel. The
    # scales are an input since opset 11 (float32 whatever the data's type); roi is left empty.
    k, name = checked.layer, checked.name
    scales = graph.constant(f"{name}.scales", [1.0, 1.0, *k.scale_factor], np.float32)
    modes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} \
        if k.mode == "nearest" else {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}
    graph.node("Resize", inputs + ["", scales], output, name, **modes)


def _dense(graph, checked, inputs, output):
    name = checked.name
    weights = [graph.weight(f"{name}.weight")] + ([graph.weight(f"{name}.bias")] if checked.layer.bias else [])
    graph.node("Gemm", inputs + weights, output, name, transB=1)


def _maxpool(graph, checked, inputs, output):
    graph.node("MaxPool", inputs, output, checked.name, **window_attributes(checked))


def _avgpool(graph, checked, inputs, output):
    # cnncc divides by kh*kw wherever the window is, padding counted as zeros
    graph.node("AveragePool", inputs, output, checked.name, count_include_pad=1, **window_attributes(checked))


def _global_pool(op):
    def export(graph, checked, inputs, output):
        # ONNX keeps the spatial axes (N x C x 1 x 1); cnncc's output is flat
        graph.node(op, inputs, f"{checked.name}_spatial", checked.name)
        graph.node("Flatten", [f"{checked.name}_spatial"], output, f"{checked.name}_flatten", axis=1)
    return export


def _flatten(graph, checked, inputs, output):
    graph.node("Flatten", inputs, output, checked.name, axis=1)


def _batchnorm(graph, checked, inputs, output):
    name, k = checked.name, checked.layer
    statistics = [graph.weight(f"{name}.{p}") for p in ("gamma", "beta", "running_mean", "running_var")]
    epsilon = float(np.float32(k.eps))
    if graph.dtype == np.float64 and epsilon != k.eps:
        # ONNX's epsilon attribute is float32: the rest of a float64 eps (exact, the two being
        # close) is added to the variance, which the importer folds back into eps
        residual = graph.constant(f"{name}.epsilon_residual", [k.eps - epsilon])
        graph.node("Add", [statistics[3], residual], f"{name}.running_var_plus_residual", f"{name}_epsilon_residual")
        statistics[3] = f"{name}.running_var_plus_residual"
    # ONNX's momentum weighs the running average, cnncc's the new batch
    graph.node("BatchNormalization", inputs + statistics, output, name, epsilon=epsilon,
               momentum=float(1.0 - k.momentum))


def _dropout(graph, checked, inputs, output):
    ratio = graph.constant(f"{checked.name}.ratio", checked.layer.rate)
    graph.node("Dropout", inputs + [ratio], output, checked.name)


def _add(graph, checked, inputs, output):
    graph.node("Add" if len(inputs) == 2 else "Sum", inputs, output, checked.name)


def _concat(graph, checked, inputs, output):
    graph.node("Concat", inputs, output, checked.name, axis=1)


def _elementwise(graph, checked, inputs, output):
    _activation(graph, checked.spec.kind, inputs[0], output, checked.name, getattr(checked.layer, "alpha", 0.0))


EXPORTERS = {
    "conv2d": _conv, "conv1d": _conv, "conv_transpose2d": _conv_transpose, "dense": _dense,
    "maxpool2d": _maxpool, "maxpool1d": _maxpool, "avgpool2d": _avgpool, "avgpool1d": _avgpool,
    "global_avgpool": _global_pool("GlobalAveragePool"), "global_maxpool": _global_pool("GlobalMaxPool"),
    "upsample2d": _upsample, "flatten": _flatten, "batchnorm": _batchnorm, "dropout": _dropout,
    "add": _add, "concat": _concat,
    **{kind: _elementwise for kind in ACTIVATION_OPS},
}


def check_opset(opset) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")


def model_proto(name, nodes, initializers, inputs, outputs, opset: int) -> "onnx.ModelProto":
    """The model of one graph in ONNX's standard domain, as cnncc's producer, checked in full."""
    body = helper.make_graph(nodes, name, inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(body, opset_imports=opsets, producer_name="cnncc",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_proto(model, opset: int = DEFAULT_OPSET) -> "onnx.ModelProto":
    """The ONNX model of a compiled cnncc Model (its spec and current weights)."""
    check_opset(opset)
    net = check_net(model.spec)
    graph = _Graph(model)
    for checked in net.layers:
        if checked.spec.kind not in EXPORTERS:
            raise ValueError(f"layer '{checked.name}': no ONNX export for layer kind '{checked.spec.kind}'")
        inputs = list(checked.spec.inputs)
        activation = checked.layer.activation_kind
        output = f"{checked.name}_pre_{activation}" if activation else checked.name
        EXPORTERS[checked.spec.kind](graph, checked, inputs, output)
        if activation:
            _activation(graph, activation, output, checked.name, f"{checked.name}_{activation}")
    element = ELEMENT_TYPES[model.program.dtype]
    last = net.layers[-1].name
    x = helper.make_tensor_value_info("input", element, ["N", *model.spec.input_shape])
    y = helper.make_tensor_value_info(last, element, ["N", *net.output_shape])
    return model_proto(model.spec.name, graph.nodes, graph.initializers, [x], [y], opset)


def export(model, path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the model as an ONNX file (atomically: a crash leaves no half-written file)."""
    proto = to_proto(model, opset)
    write_bytes_atomically(path, proto.SerializeToString())
    return Path(path)

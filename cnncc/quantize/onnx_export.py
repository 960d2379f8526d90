"""QuantizedModel -> ONNX: the int8 network in standard-domain operators, for checking it with
another runtime (onnxruntime) rather than with our own reference.

Every number comes from the QuantizedModel: its tensors' scales and zero points, its int8
weights and int32 biases, its multipliers and shifts. The model stores no weight scales, only
the factor each channel's (multiplier, shift) applies, f = M * 2^(shift - 31); the ONNX weight
scale is chosen so that ONNX's factor is that one: w_scale = f * s_out / s_in (a dense's
accumulator scale, f * s_out). ONNX's scales are float32, cnncc's float64.

Two forms of requantization (`requantize=`):

    "float"        the standard int8 ONNX: QLinearConv; a dense as MatMulInteger + int32 bias,
                   DequantizeLinear of the accumulator, QuantizeLinear; add and concat as QDQ
                   (DequantizeLinear of each input, Add / Concat, QuantizeLinear). onnxruntime
                   rounds acc * f in float32, half to even, where TFLite rounds twice in fixed
                   point (srdhm, then the rounding shift): about 0.2% of a layer's values differ
                   by one step, and through a deep network those differences grow.
    "fixed_point"  the same integer products (ConvInteger, MatMulInteger), then TFLite's
                   arithmetic itself in int64 operators (onnx_arith.py): the ops agree with
                   cnncc's bit for bit, so only the float functions below can differ.

The same in both forms:

    input           QuantizeLinear (float in, as QuantizedModel.predict takes it)
    relu clamp      Clip of the int8 output at the output's zero point
    maxpool         MaxPool on int8 (exact)
    avgpool, global_avgpool
                    the mean of (q - z) in float (exact: sums of small integers), + z, rounded half
                    away from zero as TFLite's kernel rounds (QuantizeLinear rounds half to even,
                    and a 2x2 window's mean is a tie one time in four)
    sigmoid, tanh, leaky_relu, relu (a table in cnncc)
                    QDQ around the float function: the independent check of the table
    output          DequantizeLinear of the logits (QuantizedModel.predict's output)

Tensor names: `<tensor>_q` for the int8 values of cnncc's tensors, `<tensor>_real` for their
dequantized floats; the graph's input is `input`, its output is named like the output tensor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..check import check_net
from ..extras import require
from ..files import write_bytes_atomically
from . import arith, blobs
from .graph import QuantizeError
from .scheme import ADD_LEFT_SHIFT, QMAX, QMIN

onnx = require("onnx", "onnx", "ONNX export")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ..onnx.exporter import DEFAULT_OPSET, check_opset, model_proto, window_attributes  # noqa: E402
from .onnx_arith import FixedPoint  # noqa: E402

REQUANTIZE = ("float", "fixed_point")
# a table activation's float function in ONNX: (op, attributes of the QOp)
FUNCTIONS = {"sigmoid": ("Sigmoid", lambda op: {}), "tanh": ("Tanh", lambda op: {}),
             "relu": ("Relu", lambda op: {}), "leaky_relu": ("LeakyRelu", lambda op: {"alpha": float(op.alpha)})}


class _Writer:
    """The nodes and initializers being written, with the QuantizedModel's numbers at hand."""

    def __init__(self, qmodel, requantize: str):
        self.graph, self.values, self.layout = qmodel.graph, qmodel.values, qmodel.layout
        self.layers = {checked.name: checked for checked in check_net(qmodel.spec).layers}
        self.exact = requantize == "fixed_point"
        self.nodes, self.initializers, self.named = [], [], set()
        self.fixed = FixedPoint(self)

    def node(self, op_type, inputs, output, **attributes) -> str:
        """One node, named like its one output (so names are as unique as the values are)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output

    def constant(self, name, value, dtype) -> str:
        if name not in self.named:
            self.named.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def scale(self, tensor: str) -> str:
        return self.constant(f"{tensor}.scale", self.values.scales[tensor], np.float32)

    def zero(self, tensor: str) -> str:
        return self.constant(f"{tensor}.zero_point", self.values.zero_points[tensor], np.int8)

    def real(self, tensor: str) -> str:
        """The dequantized float value of an int8 tensor (one node, shared by all its readers)."""
        name = f"{tensor}_real"
        if name not in self.named:
            self.named.add(name)
            self.node("DequantizeLinear", [f"{tensor}_q", self.scale(tensor), self.zero(tensor)], name)
        return name

    def quantize(self, source: str, tensor: str, output: str) -> str:
        return self.node("QuantizeLinear", [source, self.scale(tensor), self.zero(tensor)], output)

    def words(self, op, name: str) -> np.ndarray:
        return blobs.words(self.values, self.layout, op, name)

    def factors(self, op) -> np.ndarray:
        """The real requantization factor of each output channel, as its (multiplier, shift) applies it."""
        return np.array([arith.multiplier_value(m, s) for m, s in zip(self.words(op, "multiplier"),
                                                                       self.words(op, "shift"))])

    def unclamped(self, op) -> str:
        """Where an op writes its int8 result: its output, or, where a relu is fused, the input of
        the clamp (`clamp`) that writes the output."""
        return f"{op.output}_q" if self.values.clamp(op) == (QMIN, QMAX) else f"{op.name}_unclamped"

    def clamp(self, op) -> None:
        lo, hi = self.values.clamp(op)
        if (lo, hi) != (QMIN, QMAX):  # relu: the clamp at the output's zero point
            low = self.constant(f"{op.name}.clamp_min", lo, np.int8)
            high = self.constant(f"{op.name}.clamp_max", hi, np.int8)
            self.node("Clip", [self.unclamped(op), low, high], f"{op.output}_q")

    def requantize_accumulator(self, op, acc: str, channel_shape: tuple[int, ...]) -> None:
        """The int8 output of a conv's or dense's int32 accumulator (bias included) in the fixed-point
        form: TFLite's requantization per channel, + the output zero point, clamped."""
        c = op.dims["C_OUT"]
        wide = self.node("Cast", [acc], f"{op.name}_accumulator_int64", to=TensorProto.INT64)
        scaled = self.fixed.requantize(op.name, wide, self.words(op, "multiplier").reshape(c, *channel_shape),
                                       self.words(op, "shift").reshape(c, *channel_shape))
        self.fixed.to_int8(op.name, scaled, self.values.zero_points[op.output], self.values.clamp(op), f"{op.output}_q")


def _conv(w: _Writer, op) -> None:
    d, checked = op.dims, w.layers[op.param_layer]
    signal = len(w.graph.tensors[op.inputs[0]].shape) == 2
    kernel = (d["KW"],) if signal else (d["KH"], d["KW"])
    weight = blobs.weights(w.values, w.layout, op).reshape(d["C_OUT"], d["C_IN_PER_GROUP"], *kernel)
    weight = w.constant(f"{op.name}.weight", weight, np.int8)
    bias = blobs.true_bias(w.values, w.layout, op)
    source = f"{op.inputs[0]}_q"
    attributes = {"group": d["GROUPS"], "dilations": [d["DIL_W"]] if signal else [d["DIL_H"], d["DIL_W"]],
                  **window_attributes(checked)}
    if w.exact:
        # ConvInteger pads with the input's zero point (the real 0), as TFLite skips the padding
        acc = w.node("ConvInteger", [source, weight, w.zero(op.inputs[0])], f"{op.name}_product", **attributes)
        channel = (1,) * len(kernel)
        acc = w.node("Add", [acc, w.constant(f"{op.name}.bias", bias.reshape(-1, *channel), np.int32)],
                     f"{op.name}_accumulator")
        w.requantize_accumulator(op, acc, channel)
        return
    s_in, s_out = w.values.scales[op.inputs[0]], w.values.scales[op.output]
    inputs = [source, w.scale(op.inputs[0]), w.zero(op.inputs[0]), weight,
              w.constant(f"{op.name}.weight_scale", w.factors(op) * s_out / s_in, np.float32),
              w.constant(f"{op.name}.weight_zero_point", np.zeros(d["C_OUT"]), np.int8),
              w.scale(op.output), w.zero(op.output), w.constant(f"{op.name}.bias", bias, np.int32)]
    w.node("QLinearConv", inputs, w.unclamped(op), **attributes)
    w.clamp(op)


def _dense(w: _Writer, op) -> None:
    source = f"{op.inputs[0]}_q"
    if len(w.graph.tensors[op.inputs[0]].shape) > 1:  # a flatten between: a view in cnncc
        source = w.node("Flatten", [source], f"{op.name}_flat_q", axis=1)
    weight = blobs.weights(w.values, w.layout, op).T  # ONNX's MatMul: [K, C_OUT]
    acc = w.node("MatMulInteger", [source, w.constant(f"{op.name}.weight", weight, np.int8), w.zero(op.inputs[0])],
                 f"{op.name}_product")
    acc = w.node("Add", [acc, w.constant(f"{op.name}.bias", blobs.true_bias(w.values, w.layout, op), np.int32)],
                 f"{op.name}_accumulator")
    if w.exact:
        w.requantize_accumulator(op, acc, ())
        return
    # a dense has one factor for all its channels: the accumulator's scale is f * s_out
    acc_scale = w.constant(f"{op.name}.accumulator_scale", w.factors(op)[0] * w.values.scales[op.output], np.float32)
    real = w.node("DequantizeLinear", [acc, acc_scale], f"{op.name}_pre_quantize")
    w.quantize(real, op.output, w.unclamped(op))
    w.clamp(op)


def _maxpool(w: _Writer, op) -> None:
    w.node("MaxPool", [f"{op.inputs[0]}_q"], f"{op.output}_q", **window_attributes(w.layers[op.layers[0]]))


def _mean(w: _Writer, op, pool_op: str, attributes: dict, flatten: bool) -> None:
    """TFLite's int8 average: round(sum of q / count), ties away from zero, the padding counted as
    the zero point. Here: the float mean of (q - z) with zero padding (exact), + z, rounded."""
    z = w.values.zero_points[op.inputs[0]]
    one = w.constant("constant.one", 1.0, np.float32)
    offsets = w.node("DequantizeLinear", [f"{op.inputs[0]}_q", one, w.zero(op.inputs[0])],
                     f"{op.name}_offsets")
    mean = w.node(pool_op, [offsets], f"{op.name}_mean", **attributes)
    if flatten:  # ONNX keeps the 1 x 1 spatial axes; cnncc's tensor is flat
        mean = w.node("Flatten", [mean], f"{op.name}_mean_flat", axis=1)
    value = w.node("Add", [mean, w.constant(f"{op.name}.zero_point_real", float(z), np.float32)],
                   f"{op.name}_value")
    # round half away from zero: sign(v) * floor(|v| + 1/2); v is exact (a mean that is no tie is
    # at least 1/(2*count) from one), so this is the integer rounding itself
    magnitude = w.node("Abs", [value], f"{op.name}_abs")
    magnitude = w.node("Add", [magnitude, w.constant("constant.half", 0.5, np.float32)], f"{op.name}_abs_half")
    magnitude = w.node("Floor", [magnitude], f"{op.name}_rounded_abs")
    sign = w.node("Sign", [value], f"{op.name}_sign")
    rounded = w.node("Mul", [sign, magnitude], f"{op.name}_rounded")
    # an integer already: QuantizeLinear at scale 1 only saturates it to int8
    w.node("QuantizeLinear", [rounded, one, w.constant("constant.int8_zero", 0, np.int8)], f"{op.output}_q")


def _avgpool(w: _Writer, op) -> None:
    _mean(w, op, "AveragePool", {"count_include_pad": 1, **window_attributes(w.layers[op.layers[0]])}, flatten=False)


def _global_avgpool(w: _Writer, op) -> None:
    _mean(w, op, "GlobalAveragePool", {}, flatten=True)


def _add(w: _Writer, op) -> None:
    if not w.exact:
        reals = [w.real(name) for name in op.inputs]
        total = w.node("Add" if len(reals) == 2 else "Sum", reals, f"{op.name}_sum")
        w.quantize(total, op.output, w.unclamped(op))
        w.clamp(op)
        return
    # TFLite's add: each input's (q - z) << 20 rescaled to twice the largest input scale, summed,
    # the sum rescaled to the output
    multipliers, shifts = w.words(op, "multiplier"), w.words(op, "shift")
    terms = []
    for i, name in enumerate(op.inputs):
        prefix = f"{op.name}_input{i}"
        offset = w.fixed.offsets(prefix, name)
        shifted = w.node("Mul", [offset, w.constant(f"{op.name}.left_shift", 1 << ADD_LEFT_SHIFT, np.int64)],
                         f"{prefix}_shifted")
        terms.append(w.fixed.requantize(prefix, shifted, multipliers[i], shifts[i]))
    total = terms[0]
    for i, term in enumerate(terms[1:], 1):  # ONNX's Sum takes floats only
        total = w.node("Add", [total, term], f"{op.name}_sum{i}")
    scaled = w.fixed.requantize(op.name, total, multipliers[-1], shifts[-1])
    w.fixed.to_int8(op.name, scaled, w.values.zero_points[op.output], w.values.clamp(op), f"{op.output}_q")


def _concat(w: _Writer, op) -> None:
    if not w.exact:
        joined = w.node("Concat", [w.real(name) for name in op.inputs], f"{op.name}_joined", axis=1)
        w.quantize(joined, op.output, f"{op.output}_q")
        return
    multipliers, shifts = w.words(op, "multiplier"), w.words(op, "shift")
    parts = []
    for i, name in enumerate(op.inputs):
        prefix = f"{op.name}_input{i}"
        scaled = w.fixed.requantize(prefix, w.fixed.offsets(prefix, name), multipliers[i], shifts[i])
        parts.append(w.fixed.to_int8(prefix, scaled, w.values.zero_points[op.output], (QMIN, QMAX), f"{prefix}_q"))
    w.node("Concat", parts, f"{op.output}_q", axis=1)


def _lut(w: _Writer, op) -> None:
    op_type, attributes = FUNCTIONS[op.function]
    value = w.node(op_type, [w.real(op.inputs[0])], f"{op.name}_function", **attributes(op))
    w.quantize(value, op.output, f"{op.output}_q")


WRITERS = {"conv": _conv, "dense": _dense, "maxpool": _maxpool, "avgpool": _avgpool,
           "global_avgpool": _global_avgpool, "add": _add, "concat": _concat, "lut": _lut}


def to_proto(qmodel, opset: int = DEFAULT_OPSET, requantize: str = "float") -> "onnx.ModelProto":
    """The ONNX model of a QuantizedModel: float in, QuantizeLinear, the int8 ops, DequantizeLinear
    of the output. QuantizeError naming the layers of an op with no faithful ONNX form."""
    check_opset(opset)
    if requantize not in REQUANTIZE:
        raise ValueError(f"requantize must be one of {', '.join(REQUANTIZE)}, got {requantize!r}")
    graph = qmodel.graph
    for op in graph.ops:
        if op.kind not in WRITERS or (op.kind == "lut" and op.function not in FUNCTIONS):
            what = f"{op.kind} {op.function}" if op.function else op.kind
            raise QuantizeError(f"{graph.name}: layer '{'+'.join(op.layers)}' (int8 {what}): no faithful ONNX "
                                f"int8 form; the ONNX export writes {', '.join(WRITERS)} ops")
    w = _Writer(qmodel, requantize)
    w.quantize("input", graph.input, f"{graph.input}_q")
    for op in graph.ops:
        WRITERS[op.kind](w, op)
    w.node("DequantizeLinear", [f"{graph.output}_q", w.scale(graph.output), w.zero(graph.output)], graph.output)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *graph.tensors[graph.input].shape])
    y = helper.make_tensor_value_info(graph.output, TensorProto.FLOAT, ["N", *graph.tensors[graph.output].shape])
    return model_proto(f"{graph.name}_int8", w.nodes, w.initializers, [x], [y], opset)


def export_onnx(qmodel, path, opset: int = DEFAULT_OPSET, requantize: str = "float") -> Path:
    """Write the QuantizedModel as an ONNX file (atomically; it passes onnx.checker's full check)."""
    proto = to_proto(qmodel, opset, requantize)
    write_bytes_atomically(path, proto.SerializeToString())
    return Path(path)

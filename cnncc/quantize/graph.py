"""CheckedNet -> QGraph: the int8 network's ops, with batchnorm folded and activations fused.

The structure depends on the spec alone (never on weights or calibration), so `cnncc check
--int8` can give the weight and arena bytes before anything is quantized or built.

    conv2d | conv1d | dense [-> batchnorm] [-> relu]   one `conv`/`dense` op; relu is its output clamp
    maxpool, avgpool, global_avgpool                   their own ops; output quantized like the input
    add, concat                                        rescale every input to the output's scale
    sigmoid, tanh, leaky_relu, a relu that cannot fuse one `lut` op: a 256-entry table
    flatten, dropout, linear                           views (no op, the same int8 memory)
    softmax as the last layer                          dropped: the caller gets the dequantized logits

Anything else is refused with QuantizeError naming the layer, before anything is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..check import CheckedNet
from ..cvalues import c_ident
from ..layers import as_chw, numel
from ..layers.formulas import resolve_padding

CONV_KINDS = ("conv2d", "conv1d")
POOL_KINDS = {"maxpool2d": "maxpool", "maxpool1d": "maxpool", "avgpool2d": "avgpool", "avgpool1d": "avgpool",
              "global_avgpool": "global_avgpool"}
LUT_KINDS = ("sigmoid", "tanh", "leaky_relu", "relu")
VIEW_KINDS = ("flatten", "dropout", "linear")
# TFLite's fixed output quantization of the bounded activations: (scale, zero point)
FIXED_OUTPUT = {"sigmoid": (1.0 / 256.0, -128), "tanh": (1.0 / 128.0, 0)}
SUPPORTED = ("conv2d", "conv1d", "dense", "batchnorm", *POOL_KINDS, "add", "concat", *LUT_KINDS, *VIEW_KINDS,
             "softmax (as the last layer)")
LUT_SIZE = 256


class QuantizeError(ValueError):
    """A network (or a file) the int8 path cannot take, with the layer it stops at."""


@dataclass(frozen=True)
class QTensor:
    name: str  # C identifier fragment
    shape: tuple[int, ...]  # per sample
    # where calibration reads the float value this tensor quantizes: ("input", None), or a spec layer
    # and which of its float outputs ("post": its final output, "pre": before its fused activation)
    source: tuple[str, str | None]
    fixed: tuple[float, int] | None = None  # a fixed (scale, zero point): sigmoid and tanh outputs
    same_as: str | None = None  # quantized exactly like this tensor (pool outputs share their input's)

    @property
    def size(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class QOp:
    name: str  # C identifier fragment
    kind: str  # conv | dense | maxpool | avgpool | global_avgpool | add | concat | lut (its template)
    layers: tuple[str, ...]  # the spec layers it implements (conv1, bn1, relu1)
    line: int | None
    inputs: tuple[str, ...]  # tensor names
    output: str
    dims: dict[str, int]  # named dimensions of its kernel (validated ints)
    param_layer: str | None = None  # the conv/dense whose float weights it quantizes
    batchnorm: str | None = None  # the batchnorm folded into it
    bn_eps: float = 0.0  # that batchnorm's eps
    clamp: str | None = None  # "relu": the output clamp; None: the whole int8 range
    function: str | None = None  # a lut op's activation kind
    alpha: float = 0.0  # leaky_relu's slope
    weight_count: int = 0  # int8 elements of weights (or the lut's table)
    word_count: int = 0  # int32 elements: biases, multipliers, shifts

    @property
    def words(self) -> dict[str, int]:
        """The int32 arrays of this op in the words blob, in order: name -> length."""
        if self.kind in ("conv", "dense"):
            c = self.dims["C_OUT"]
            return {"bias": c, "multiplier": c, "shift": c}
        if self.kind == "add":
            n = len(self.inputs)
            return {"multiplier": n + 1, "shift": n + 1}  # each input's, then the output's
        if self.kind == "concat":
            n = len(self.inputs)
            return {"multiplier": n, "shift": n}
        return {}


@dataclass(frozen=True)
class QGraph:
    name: str
    tensors: dict[str, QTensor]
    ops: tuple[QOp, ...]
    input: str
    output: str
    dropped_softmax: str | None = None  # the final softmax layer the int8 path leaves out
    outputs_of: dict[str, str] = field(default_factory=dict)  # spec layer -> the tensor holding its output

    @property
    def weight_bytes(self) -> int:
        return sum(op.weight_count for op in self.ops) + 4 * sum(op.word_count for op in self.ops)


def _window_dims(layer, in_shape, out_shape, dilation=(1, 1)) -> dict[str, int]:
    """The named dimensions of a windowed kernel, from the layer's fields and the shape formulas."""
    c, h, w = as_chw(in_shape)
    _, oh, ow = as_chw(out_shape)
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    pad_h = resolve_padding(layer.padding, h, kh, sh, dilation[0], 0)
    pad_w = resolve_padding(layer.padding, w, kw, sw, dilation[1], 1)
    return {"H_IN": h, "W_IN": w, "H_OUT": oh, "W_OUT": ow, "KH": kh, "KW": kw, "STRIDE_H": sh, "STRIDE_W": sw,
            "PAD_TOP": pad_h[0], "PAD_LEFT": pad_w[0], "PADDED": int(sum(pad_h) + sum(pad_w) > 0), "_C": c}


def _conv_dims(layer, in_shape, out_shape) -> dict[str, int]:
    conv = layer.layer
    dims = _window_dims(conv, in_shape, out_shape, conv.dilation)
    c, groups = dims.pop("_C"), conv.groups
    dims.update(C_IN=c, C_OUT=conv.filters, DIL_H=conv.dilation[0], DIL_W=conv.dilation[1], GROUPS=groups,
                C_IN_PER_GROUP=c // groups, C_OUT_PER_GROUP=conv.filters // groups,
                K_GROUP=c // groups * conv.kernel[0] * conv.kernel[1])
    return dims


def _pool_dims(layer, in_shape, out_shape) -> dict[str, int]:
    if layer.spec.kind == "global_avgpool":  # one window over the whole plane
        c, h, w = as_chw(in_shape)
        return {"C": c, "SPATIAL": h * w}
    dims = _window_dims(layer.layer, in_shape, out_shape)
    dims["C"] = dims.pop("_C")
    return dims


def build_graph(net: CheckedNet) -> QGraph:
    spec = net.spec
    readers: dict[str, int] = {}
    for layer in net.layers:
        for name in layer.spec.inputs:
            readers[name] = readers.get(name, 0) + 1
    last = net.layers[-1].name
    tensors = {"input": QTensor("input", spec.input_shape, ("input", None))}
    ops: list[dict] = []  # mutable while folding; frozen at the end
    producer: dict[str, int] = {}  # tensor -> index in ops
    outputs_of = {"input": "input"}  # spec layer -> tensor
    used_names = {"input"}
    dropped = None

    def take(wanted: str) -> str:
        name, n = c_ident(wanted), 2
        while name in used_names:
            name, n = f"{c_ident(wanted)}_{n}", n + 1
        used_names.add(name)
        return name

    def new_op(layer, kind, inputs, shape, source, **extra):
        name = take(layer.name)
        tensors[name] = QTensor(name, shape, source, extra.pop("fixed", None), extra.pop("same_as", None))
        op = {"name": name, "kind": kind, "layers": [layer.name], "line": layer.spec.loc.line if layer.spec.loc
              else None, "inputs": tuple(inputs), "output": name, **extra}
        producer[name] = len(ops)
        ops.append(op)
        return name

    def refuse(layer, why: str):
        raise QuantizeError(f"{spec.name}: layer '{layer.name}' ({layer.spec.kind}): {why}")

    def fusable(layer, tensor: str, kinds: tuple[str, ...]) -> dict | None:
        """The op producing `tensor` when `layer` may fold into it: a kind in `kinds` with no clamp yet,
        whose output only this layer reads (through no view)."""
        source = layer.spec.inputs[0]
        index = producer.get(tensor)
        if index is None or outputs_of.get(source) != tensor or readers.get(source, 0) != 1:
            return None
        op = ops[index]
        if op["kind"] not in kinds or op.get("clamp") or op["layers"][-1] != source:
            return None
        return op

    for layer in net.layers:
        kind = layer.spec.kind
        inputs = [outputs_of[name] for name in layer.spec.inputs]
        in_shapes, out_shape = layer.input_shapes, layer.output_shape
        activation = layer.layer.activation_kind
        if kind in CONV_KINDS or kind == "dense":
            if activation == "softmax":
                refuse(layer, "a fused softmax activation is not supported in int8; end the network with a "
                              "separate softmax layer (dropped: the caller gets the logits) or none")
            if kind == "dense":
                dims = {"IN": in_shapes[0][0], "C_OUT": out_shape[0], "K_GROUP": in_shapes[0][0]}
            else:
                dims = _conv_dims(layer, in_shapes[0], out_shape)
            fused = activation == "relu"
            name = new_op(layer, "conv" if kind in CONV_KINDS else "dense", inputs, out_shape,
                          (layer.name, "post" if fused or not activation else "pre"), dims=dims,
                          param_layer=layer.name, clamp="relu" if fused else None,
                          weight_count=dims["C_OUT"] * dims["K_GROUP"], word_count=3 * dims["C_OUT"])
            if activation and not fused:
                name = new_op(layer, "lut", [name], out_shape, (layer.name, "post"),
                              fixed=FIXED_OUTPUT.get(activation), dims={"SIZE": numel(out_shape)},
                              function=activation, alpha=0.01 if activation == "leaky_relu" else 0.0,
                              weight_count=LUT_SIZE)
            outputs_of[layer.name] = name
        elif kind == "batchnorm":
            op = fusable(layer, inputs[0], ("conv", "dense"))
            if op is None or op.get("batchnorm"):
                refuse(layer, "int8 folds batchnorm into the conv2d, conv1d or dense directly before it (with "
                              "no activation between and nothing else reading that layer's output); here there "
                              "is none to fold into")
            op["batchnorm"], op["bn_eps"] = layer.name, float(layer.layer.eps)
            op["layers"].append(layer.name)
            tensors[op["output"]] = QTensor(op["output"], out_shape, (layer.name, "post"))
            outputs_of[layer.name] = op["output"]
        elif kind == "relu" and (op := fusable(layer, inputs[0], ("conv", "dense", "add"))) is not None:
            op["clamp"] = "relu"
            op["layers"].append(layer.name)
            tensors[op["output"]] = QTensor(op["output"], out_shape, (layer.name, "post"))
            outputs_of[layer.name] = op["output"]
        elif kind in LUT_KINDS:
            alpha = getattr(layer.layer, "alpha", 0.0)
            outputs_of[layer.name] = new_op(layer, "lut", inputs, out_shape, (layer.name, "post"),
                                            fixed=FIXED_OUTPUT.get(kind), dims={"SIZE": numel(out_shape)},
                                            function=kind, alpha=float(alpha), weight_count=LUT_SIZE)
        elif kind in POOL_KINDS:
            outputs_of[layer.name] = new_op(layer, POOL_KINDS[kind], inputs, out_shape, (layer.name, "post"),
                                            same_as=inputs[0], dims=_pool_dims(layer, in_shapes[0], out_shape))
        elif kind == "add":
            name = new_op(layer, "add", inputs, out_shape, (layer.name, "post"), dims={"SIZE": numel(out_shape)},
                          word_count=2 * (len(inputs) + 1))
            outputs_of[layer.name] = name
        elif kind == "concat":
            _, h, w = as_chw(out_shape)
            dims = {"SPATIAL": h * w, "C_OUT": out_shape[0]}
            outputs_of[layer.name] = new_op(layer, "concat", inputs, out_shape, (layer.name, "post"), dims=dims,
                                            channels=tuple(shape[0] for shape in in_shapes),
                                            word_count=2 * len(inputs))
        elif kind in VIEW_KINDS:
            outputs_of[layer.name] = inputs[0]
        elif kind == "softmax" and layer.name == last:
            outputs_of[layer.name] = inputs[0]
            dropped = layer.name
        else:
            why = ("softmax is supported only as the last layer (dropped: the caller gets the logits)"
                   if kind == "softmax" else f"the int8 path does not support this layer kind; it supports "
                                             f"{', '.join(SUPPORTED)}")
            refuse(layer, why)
    output = outputs_of[last]
    if output == "input":
        raise QuantizeError(f"{spec.name}: the network computes nothing in int8 (its output is its input)")
    frozen = []
    for op in ops:
        channels = op.pop("channels", ())
        if channels:
            op["dims"] = {**op["dims"], **{f"C_IN{i}": c for i, c in enumerate(channels)}}
        op["layers"] = tuple(op["layers"])
        frozen.append(QOp(**op))
    return QGraph(spec.name, tensors, tuple(frozen), "input", output, dropped, outputs_of)


def chw(tensor: QTensor) -> tuple[int, int, int]:
    return as_chw(tensor.shape)




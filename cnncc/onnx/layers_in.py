"""One handler per ONNX operator that touches the network's data: which cnncc layer it becomes.

Each takes the Importer (importer.py) and the node's attributes, reads its inputs through it and
records its output. The ops on images and signals (Conv, ConvTranspose, pools, Resize, Pad) are in
spatial_in.py; HANDLERS here lists them all. Float attributes are float32 in ONNX; they are
written as the shortest decimal that is that float32 (9.999999747e-06 -> 1e-05).
"""
from __future__ import annotations

import numpy as np

from ..layers import REGISTRY
from .fold import Const
from .graph import Act
from .spatial_in import conv, conv_transpose, global_pool, pad, pool, reduce, resize

FUSABLE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
ELEMENTWISE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu"}
FUSED_LEAKY_SLOPE = 0.01


def short_float(value) -> float:
    return float(repr(np.float32(value)).replace("np.float32(", "").rstrip(")"))


def gemm(im, attrs):
    act = im.act()
    if attrs.get("transA", 0):
        im.fail("transA=1", "Gemm with transA=0")
    weight = im.weight(1, "weight")
    weight = weight if attrs.get("transB", 0) else weight.T
    _dense(im, act, weight * short_float(attrs.get("alpha", 1.0)), im.weight(2, "bias", required=False),
           short_float(attrs.get("beta", 1.0)))


def matmul(im, attrs):
    act = im.act()
    weight = im.weight(1, "weight")
    if weight.ndim != 2:
        im.fail(f"a weight of shape {list(weight.shape)}", "MatMul of a flat input by a constant matrix")
    _dense(im, act, weight.T, None, 1.0)


def _dense(im, act, weight, bias, beta):
    n = act.cnncc_shape[0]
    if len(act.cnncc_shape) != 1 or weight.ndim != 2 or weight.shape[1] != n:
        im.fail(f"a {list(weight.shape)} weight for a sample of shape {list(act.shape)}",
                "a fully connected layer on a flat input (add Flatten before it)")
    units = int(weight.shape[0])
    params, fields = {"weight": np.ascontiguousarray(weight)}, {"units": units}
    if bias is not None:
        if bias.size not in (1, units):
            im.fail(f"a bias of shape {list(bias.shape)} for {units} outputs")
        params["bias"] = np.broadcast_to(bias.reshape(-1) * beta, (units,))
    else:
        fields["bias"] = False
    im.output(im.add_layer("dense", fields, [act], params, (units,)))


def add(im, attrs):
    values = [im.value(i) for i in range(len(im.node.input))]
    acts = [v for v in values if isinstance(v, Act)]
    if im.node.op_type == "Add" and len(acts) == 1 and _fold_bias(im, acts[0], values):
        return
    if len(acts) != len(values) or len(acts) < 2:
        im.fail("an Add of the network's data and a constant",
                "Add/Sum of activations, or a constant bias right after a bias-less Conv, Gemm or MatMul")
    shapes = {a.cnncc_shape for a in acts}
    if len(shapes) != 1:
        im.fail(f"inputs of shapes {[list(a.shape) for a in acts]}", "sums of same-shaped inputs (no broadcasting)")
    im.output(im.add_layer("add", {}, acts, {}, acts[0].shape, acts[0].flat))


def _fold_bias(im, act, values) -> bool:
    """An Add of a constant after a bias-less Conv, Gemm or MatMul: that layer's bias."""
    layer = im.last_layer(act)
    const_index = 1 - values.index(act)
    if layer is None or layer.get("bias", True) or "activation" in layer or \
            not im.single_consumer(im.node.input[values.index(act)]):
        return False
    bias = im.weight(const_index, "bias")
    squeezed = bias.reshape(bias.shape[1:]) if bias.ndim == len(act.shape) + 1 and bias.shape[0] == 1 else bias
    if squeezed.shape != (act.shape[0],) + (1,) * (len(act.shape) - 1):  # one value per channel
        return False
    del layer["bias"]
    im.weights[f"{layer['name']}.bias"] = squeezed.reshape(-1)
    im.output(act)
    return True


def concat(im, attrs):
    acts = [im.act(i) for i in range(len(im.node.input))]
    if int(attrs["axis"]) % (len(acts[0].shape) + 1) != 1:
        im.fail(f"a Concat along axis {attrs['axis']}", "Concat along the channels (axis 1)")
    shapes = [a.cnncc_shape for a in acts]
    if len({s[1:] for s in shapes}) != 1 or len({len(s) for s in shapes}) != 1:
        im.fail(f"inputs of shapes {[list(a.shape) for a in acts]}", "Concat of inputs with equal spatial sizes")
    im.output(im.add_layer("concat", {}, acts, {}, (sum(s[0] for s in shapes), *shapes[0][1:])))


def activation(im, attrs):
    act = im.act()
    op = im.node.op_type
    if op == "Softmax":
        axis = int(attrs.get("axis", -1)) % (len(act.cnncc_shape) + 1)
        if axis != 1:
            im.fail(f"a Softmax along axis {attrs.get('axis', -1)}", "Softmax over the channels (axis 1)")
    alpha = short_float(attrs.get("alpha", 0.01)) if op == "LeakyRelu" else _prelu_slope(im) if op == "PRelu" else None
    op = "LeakyRelu" if op == "PRelu" else op
    kind = FUSABLE.get(op) or ("leaky_relu" if alpha == FUSED_LEAKY_SLOPE else None)
    layer = im.last_layer(act)
    if kind and layer is not None and "activation" in REGISTRY[layer["type"]].fields and "activation" not in layer \
            and im.single_consumer(im.node.input[0]):
        layer["activation"] = kind
        layer["inputs"] = layer.pop("inputs")  # kept last, as in every layer
        im.output(act)
        return
    fields = {"alpha": alpha} if op == "LeakyRelu" else {}
    kind = {"Softmax": "softmax", **ELEMENTWISE}[op]
    im.output(im.add_layer(kind, fields, [act], {}, act.shape, act.flat))


def _prelu_slope(im) -> float:
    """A PRelu's slope, which cnncc's leaky_relu has one of for every channel (cnncc's float64
    export writes a slope that way, ONNX's LeakyRelu alpha being float32)."""
    slope = im.weight(1, "slope")
    if slope.size != 1:
        im.fail(f"a slope of shape {list(slope.shape)}", "PRelu with one slope for all channels (leaky_relu)")
    value = float(slope.reshape(-1)[0])
    return value if im.dtype == np.float64 else short_float(value)


def _epsilon(im, attrs) -> float:
    """A BatchNormalization's epsilon: its float32 attribute, plus a scalar constant added to the
    variance (var + c + eps is var + (eps + c); cnncc's float64 export writes the rest of a float64
    eps so), which makes the variance input the constant before that Add."""
    epsilon = float(np.float32(attrs.get("epsilon", 1e-5)))
    parts = im.constant_sum(im.node.input[4])
    if parts is not None and im.dtype == np.float64:
        variance, addend = parts
        im.values[im.node.input[4]] = Const.of(variance)
        return epsilon + addend
    return short_float(epsilon)


def batchnorm(im, attrs):
    act = im.act()
    if attrs.get("training_mode", 0):
        im.fail("training_mode=1", "BatchNormalization in inference mode")
    im.unused_outputs(1, "training statistics")
    epsilon = _epsilon(im, attrs)
    params = {key: im.weight(i, key).reshape(-1) for i, key in
              enumerate(("gamma", "beta", "running_mean", "running_var"), start=1)}
    channels = act.cnncc_shape[0]
    if any(p.shape != (channels,) for p in params.values()):
        im.fail(f"statistics of shapes {[list(p.shape) for p in params.values()]} for {channels} channels")
    fields = {"momentum": short_float(1.0 - short_float(attrs.get("momentum", 0.9))),
              "eps": epsilon}
    fields = {k: v for k, v in fields.items() if v != {"momentum": 0.1, "eps": 1e-5}[k]}
    im.output(im.add_layer("batchnorm", fields, [act], params, act.shape, act.flat))


def flatten(im, attrs):
    act = im.act()
    if int(attrs.get("axis", 1)) % (len(act.shape) + 1) != 1:
        im.fail(f"a Flatten at axis {attrs.get('axis')}", "Flatten at axis 1 (keeping the batch)")
    _to_flat(im, act)


def _to_flat(im, act):
    if act.flat or len(act.shape) == 1:  # already flat in cnncc: nothing to do
        im.output(Act(act.layer, act.cnncc_shape))
    else:
        im.output(im.add_layer("flatten", {}, [act], {}, (int(np.prod(act.shape)),)))


def reshape(im, attrs):
    act = im.act()
    value = im.value(1)
    if not isinstance(value, Const):
        im.fail("a Reshape whose target shape is not a constant")
    per_sample = set()
    for batch, target in zip(im.batches, value.values):
        full = _resolve_reshape(im, [batch, *act.shape], [int(d) for d in target.reshape(-1)], attrs)
        if full[0] != batch:
            im.fail(f"a Reshape to {list(target)} that moves the batch axis", "Reshape keeping the batch first")
        per_sample.add(tuple(full[1:]))
    if len(per_sample) != 1:
        im.fail("a Reshape whose per-sample shape depends on the batch size")
    shape = per_sample.pop()
    if shape == act.shape:
        im.output(act)
    elif len(shape) == 1:
        _to_flat(im, act)
    else:
        im.fail(f"a Reshape of {list(act.shape)} to {list(shape)}", "Reshape to [N, -1] (a flatten)")


def _resolve_reshape(im, shape, target, attrs):
    if not attrs.get("allowzero", 0):
        target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        im.fail(f"a Reshape target {target}")
    total = int(np.prod(shape))
    known = int(np.prod([d for d in target if d != -1]))
    if -1 in target:
        if known == 0 or total % known:
            im.fail(f"a Reshape of {shape} to {target}")
        target = [total // known if d == -1 else d for d in target]
    if int(np.prod(target)) != total:
        im.fail(f"a Reshape of {shape} to {target}")
    return target


def squeeze(im, attrs):
    act = im.act()
    if act.flat:
        _to_flat(im, act)
    else:
        im.fail("a Squeeze of the network's data", "Squeeze only of a global pool's trailing 1 x 1")


def passthrough(im, attrs):
    act = im.act()
    if im.node.op_type == "Dropout":
        im.unused_outputs(1, "the dropout mask")
        training = im.const(2, "training_mode", required=False)
        if training is not None and bool(training.reshape(-1)[0]):
            im.fail("training_mode=True", "Dropout in inference (removed on import)")
    im.output(act)


def shape(im, attrs):
    act = im.act()
    full = im.shape_of(act)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    im.output(Const(tuple(v[slice(start, end)] for v in full.values)))


def cast_like(im, attrs):
    """A constant cast to the type of the network's data (the dynamo exporter's zero biases)."""
    value = im.value(0)
    if not isinstance(value, Const):
        im.fail("a CastLike of the network's data", "CastLike of a constant")
    im.output(Const(tuple(v.astype(im.dtype) for v in value.values)))


HANDLERS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "Resize": resize,
    "MaxPool": lambda im, a: pool(im, a, "max"), "AveragePool": lambda im, a: pool(im, a, "avg"),
    "GlobalAveragePool": lambda im, a: global_pool(im, a, "global_avgpool"),
    "GlobalMaxPool": lambda im, a: global_pool(im, a, "global_maxpool"),
    "ReduceMean": lambda im, a: reduce(im, a, "global_avgpool"),
    "ReduceMax": lambda im, a: reduce(im, a, "global_maxpool"), "Gemm": gemm, "MatMul": matmul,
    "Add": add, "Sum": add, "Concat": concat, "BatchNormalization": batchnorm, "Flatten": flatten,
    "Reshape": reshape, "Squeeze": squeeze, "Identity": passthrough, "Dropout": passthrough, "Shape": shape,
    "Pad": pad, "CastLike": cast_like, **{op: activation for op in ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Softmax")},
}

SUPPORTED = ("Conv, ConvTranspose, Resize (integer upsampling), MaxPool, AveragePool, GlobalAveragePool, "
             "GlobalMaxPool, ReduceMean and ReduceMax (global), Gemm, MatMul, Add, Sum, Concat, "
             "BatchNormalization, Flatten, Reshape, Squeeze, Identity, Dropout, Pad, Relu, LeakyRelu, "
             "PRelu (one slope), Sigmoid, Tanh, Softmax on the network's data, and constant subgraphs of Shape, Gather, Unsqueeze, Concat, "
             "Slice, Cast and arithmetic")

"""Every layer kind through the compiled C against the NumPy oracle (tests/reference.py).

The table CASES holds small example configurations of every kind in cnncc.layers.REGISTRY
(a kind without a case fails test_every_registered_kind_has_cases). To keep the suite fast,
the cases sharing an input shape are compiled together as one model: each case is a branch
    input -> pre-layer(s) -> the layer under test -> flatten
and the branches are joined by concat, with the mse loss on top. A pre-layer is the identity
(leaky_relu with slope 1) or, where a case needs other channel counts, a random 1x1
convolution (dense on flat inputs) without bias; either way the layer under test reads an
activation, so the C code computes its input gradient, readable with
Model.activation(name, batch, grad=True). The same groups are also built with every layer
reading the network input directly (the kernels' no-input-gradient variant).

The mse trick: with targets t = y - r R, dL/dy = 2 (y - t) / numel = 2 r R / numel =: G, a known
random matrix, so every branch's output gradient is known and the reference backward can be
evaluated at it. The reference backward is itself checked against central finite
differences of the C loss (on the parameters and on the network input).

Relative errors are max|a - b| / max(max|a|, max|b|) over a tensor.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest

import cnncc
import reference as ref
from cnncc.backends.vector.batchnorm import BN_MAX_GROUP
from reference import rel_err
import seed_examples
from cnncc.options import DEFAULT_CFLAGS
from cnncc.check import check_net
from cnncc.lowering import lower
from cnncc.layers import REGISTRY
from cnncc.spec import load_spec

N = 3  # batch of the table's models
SEED = 20240517  # dropout seed of the training passes
TOL_FORWARD64 = 1e-12
TOL_BACKWARD64 = 1e-10  # C backward vs reference backward (both exact algorithms in float64)
TOL_FD = 1e-6  # reference backward vs finite differences of the C loss
TOL_FORWARD32 = 1e-5
# C backward in float32 vs the reference's in float64 from the same float32 inputs and outputs:
# the kernels' float sums (and a float32 output gradient), relative to each gradient's largest
TOL_BACKWARD32 = 2e-5  # the largest measured: 2.6e-6 (conv_depthwise_b), the median 1e-7
RESIDUAL = 1e-3  # y - t of the mse trick
RESIDUAL32 = 0.1  # ... in float32


def kink_safe(rng, shape) -> np.ndarray:
    """Distinct values with |x| >= 0.1 and pairwise gaps >= 1/size: no relu kink, no max-pool
    tie within a finite-difference step."""
    n = math.prod(shape)
    magnitudes = 0.1 + rng.permutation(n) / n
    return (magnitudes * rng.choice([-1.0, 1.0], n)).reshape(shape)


# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------

IMG = (4, 7, 8)  # C, H, W
IMG_B = (2, 9, 6)
ROW = (2, 1, 3)  # a one-row image
SIG = (4, 9)  # C, L
FLAT = (6,)


@dataclass(frozen=True)
class Case:
    id: str  # also the layer's name in the generated spec
    shape: tuple  # the network input, per sample
    layer: dict  # type and fields of the layer under test
    wire: tuple = (0,)  # which pre-layer feeds each input of the layer
    pre_channels: tuple = ()  # output channels of each pre-layer (default: the input's, identity)
    after: dict | None = None  # a layer reading the case's output (a maxpool after a conv: ir.PooledBackward)

    @property
    def kind(self) -> str:
        return self.layer["type"]

    @property
    def n_pre(self) -> int:
        return max(self.wire) + 1

    def pre_out(self, k: int) -> int:
        return self.pre_channels[k] if self.pre_channels else self.shape[0]


def _c(id, shape, **layer):
    wire = layer.pop("wire", (0,))
    pre = layer.pop("pre", ())
    after = layer.pop("after", None)
    return Case(id, shape, layer, wire, pre, after)


CASES = [
    # conv2d: every option that changes the maths
    _c("conv_basic", IMG_B, type="conv2d", filters=3, kernel=3),
    _c("conv_stride2", IMG, type="conv2d", filters=3, kernel=3, stride=2),
    _c("conv_pad_int", IMG, type="conv2d", filters=2, kernel=3, padding=2),
    _c("conv_pad_pair", IMG, type="conv2d", filters=3, kernel=3, padding=[1, 2], stride=[1, 2]),
    _c("conv_same_odd", IMG, type="conv2d", filters=3, kernel=3, padding="same"),
    _c("conv_same_even", IMG, type="conv2d", filters=3, kernel=4, padding="same"),
    _c("conv_same_even_b", IMG_B, type="conv2d", filters=2, kernel=[2, 4], padding="same"),
    _c("conv_same_stride2", IMG, type="conv2d", filters=3, kernel=3, stride=2, padding="same"),
    _c("conv_same_even_s2", IMG_B, type="conv2d", filters=2, kernel=[4, 2], stride=[2, 3], padding="same"),
    _c("conv_dilation2", IMG, type="conv2d", filters=3, kernel=3, dilation=2, padding=1),
    _c("conv_dilation_same", IMG_B, type="conv2d", filters=2, kernel=3, dilation=[2, 1], padding="same"),
    _c("conv_dil_stride", IMG_B, type="conv2d", filters=2, kernel=2, dilation=[3, 2], stride=2, padding=[1, 0]),
    _c("conv_groups2", IMG, type="conv2d", filters=6, kernel=3, groups=2, padding=1),
    _c("conv_depthwise", IMG, type="conv2d", filters=4, kernel=3, groups=4, padding=1, stride=2),
    # a Winograd forward (3x3, stride 1, 16+ channels) with an odd output height and an even width
    _c("conv_winograd", IMG, type="conv2d", filters=16, kernel=3, padding=1, pre=(16,)),
    _c("conv_depthwise_b", IMG_B, type="conv2d", filters=2, kernel=[3, 2], groups=2),
    # the depthwise kernel (stride 1, one input channel per group): every variant of its plan
    _c("dw_same_relu", IMG, type="conv2d", filters=4, kernel=3, groups=4, padding="same", activation="relu"),
    _c("dw_mult2_dilated", IMG_B, type="conv2d", filters=4, kernel=[3, 2], groups=2, dilation=[2, 1],
       padding=[1, 0, 2, 1], bias=False),
    _c("dw_tall", IMG, type="conv2d", filters=4, kernel=[3, 1], groups=4, padding=[1, 0]),
    _c("dw_pointwise", IMG_B, type="conv2d", filters=2, kernel=1, groups=2),
    _c("dw_wide_pad", IMG, type="conv2d", filters=8, kernel=3, groups=4, padding=2),
    _c("dw_cropped", IMG_B, type="conv2d", filters=2, kernel=2, groups=2, padding=[2, 1], activation="tanh"),
    _c("conv_nobias", IMG, type="conv2d", filters=3, kernel=[2, 3], bias=False),
    _c("conv_pad_sides", IMG, type="conv2d", filters=3, kernel=3, padding=[0, 2, 1, 0]),
    _c("conv_pad_sides_s2", IMG_B, type="conv2d", filters=2, kernel=[2, 3], stride=2, padding=[1, 0, 0, 2]),
    _c("conv_nonsquare", IMG, type="conv2d", filters=2, kernel=[1, 4], stride=[2, 1], padding=[0, 1]),
    _c("conv_1x1", IMG_B, type="conv2d", filters=3, kernel=1),
    _c("conv_full_kernel", IMG_B, type="conv2d", filters=2, kernel=[9, 6]),
    _c("conv_relu", IMG, type="conv2d", filters=3, kernel=3, padding=1, activation="relu"),
    _c("conv_leaky", IMG, type="conv2d", filters=3, kernel=2, activation="leaky_relu"),
    _c("conv_sigmoid", IMG_B, type="conv2d", filters=2, kernel=3, activation="sigmoid"),
    _c("conv_tanh", IMG_B, type="conv2d", filters=2, kernel=3, stride=2, activation="tanh"),
    _c("conv_softmax", IMG, type="conv2d", filters=3, kernel=3, activation="softmax"),
    _c("conv_linear", IMG, type="conv2d", filters=2, kernel=3, activation="linear"),
    # a conv whose backward goes through the maxpool after it (ir.PooledBackward), and one that cannot
    _c("conv_relu_pool", IMG, type="conv2d", filters=3, kernel=3, padding=1, activation="relu",
       after={"type": "maxpool2d", "kernel": 2}),
    _c("conv_grouped_pool", IMG, type="conv2d", filters=4, kernel=3, groups=2, activation="relu",
       after={"type": "maxpool2d", "kernel": 2}),
    _c("conv_pool_grows", IMG, type="conv2d", filters=3, kernel=3, padding=1, activation="relu",
       after={"type": "maxpool2d", "kernel": 2, "stride": 1, "padding": 1}),  # more outputs than inputs
    # conv_transpose2d: every option, and the sizes output_padding picks
    _c("convt_basic", IMG_B, type="conv_transpose2d", filters=3, kernel=3),
    _c("convt_stride2", IMG, type="conv_transpose2d", filters=2, kernel=3, stride=2),
    _c("convt_s2_k2", IMG_B, type="conv_transpose2d", filters=3, kernel=2, stride=2),
    _c("convt_pad_outpad", IMG, type="conv_transpose2d", filters=3, kernel=3, stride=2, padding=1,
       output_padding=1),
    _c("convt_pair", IMG_B, type="conv_transpose2d", filters=2, kernel=[2, 3], stride=[3, 1], padding=[1, 1],
       output_padding=[2, 0]),
    _c("convt_dilation", IMG, type="conv_transpose2d", filters=2, kernel=3, dilation=2, padding=2),
    _c("convt_dil_outpad", IMG_B, type="conv_transpose2d", filters=2, kernel=2, stride=[1, 2], dilation=[3, 2],
       output_padding=[2, 1]),  # output_padding below the dilation, not the stride (height)
    _c("convt_groups2", IMG, type="conv_transpose2d", filters=6, kernel=3, stride=2, groups=2, padding=1),
    _c("convt_depthwise", IMG, type="conv_transpose2d", filters=4, kernel=2, stride=2, groups=4),
    _c("convt_crop", IMG_B, type="conv_transpose2d", filters=2, kernel=1, padding=[2, 1]),  # padding crops input rows
    _c("convt_nobias_relu", IMG, type="conv_transpose2d", filters=3, kernel=[3, 2], stride=[2, 1], bias=False,
       activation="relu"),
    _c("convt_sigmoid", IMG_B, type="conv_transpose2d", filters=2, kernel=4, stride=2, padding=1,
       activation="sigmoid"),
    _c("convt_channels", IMG, type="conv_transpose2d", filters=5, kernel=3, stride=2, pre=(3,)),
    _c("convt_row", ROW, type="conv_transpose2d", filters=2, kernel=[1, 2], stride=2, output_padding=[1, 0]),
    # conv1d
    _c("c1_basic", SIG, type="conv1d", filters=3, kernel=3),
    _c("c1_same_odd", SIG, type="conv1d", filters=3, kernel=3, padding="same"),
    _c("c1_same_even", SIG, type="conv1d", filters=2, kernel=4, padding="same"),
    _c("c1_same_stride", SIG, type="conv1d", filters=2, kernel=4, stride=2, padding="same"),
    _c("c1_pad_sides", SIG, type="conv1d", filters=2, kernel=3, padding=[2, 0]),
    _c("c1_stride_pad", SIG, type="conv1d", filters=3, kernel=3, stride=2, padding=1),
    _c("c1_dilation", SIG, type="conv1d", filters=2, kernel=3, dilation=2),
    _c("c1_dilation_same", SIG, type="conv1d", filters=2, kernel=3, dilation=3, padding="same"),
    _c("c1_groups", SIG, type="conv1d", filters=6, kernel=2, groups=2),
    _c("c1_depthwise", SIG, type="conv1d", filters=4, kernel=3, groups=4, padding=1),
    _c("c1_depthwise_mult", SIG, type="conv1d", filters=8, kernel=3, groups=4, dilation=2, padding="same"),
    _c("c1_nobias_tanh", SIG, type="conv1d", filters=2, kernel=3, bias=False, activation="tanh"),
    _c("c1_relu", SIG, type="conv1d", filters=3, kernel=2, activation="relu"),
    _c("c1_relu_pool", SIG, type="conv1d", filters=3, kernel=3, padding=1, activation="relu",
       after={"type": "maxpool1d", "kernel": 3, "stride": 2, "padding": 1}),
    # pooling
    _c("max_k2", IMG, type="maxpool2d", kernel=2),
    _c("max_k3_s2_p1", IMG, type="maxpool2d", kernel=3, stride=2, padding=1),
    _c("max_overlap_pair", IMG_B, type="maxpool2d", kernel=[2, 3], stride=1, padding=[1, 1]),
    _c("max_k3_s1", IMG_B, type="maxpool2d", kernel=3, stride=[1, 2]),
    _c("max_pad_sides", IMG, type="maxpool2d", kernel=3, stride=2, padding=[1, 0, 0, 1]),
    _c("avg_k2", IMG, type="avgpool2d", kernel=2),
    _c("avg_k3_s2_p1", IMG, type="avgpool2d", kernel=3, stride=2, padding=1),
    _c("avg_overlap_pair", IMG_B, type="avgpool2d", kernel=[2, 3], stride=1, padding=[1, 1]),
    _c("avg_k3_s1", IMG_B, type="avgpool2d", kernel=3, stride=[1, 2]),
    _c("max1_k2", SIG, type="maxpool1d", kernel=2),
    _c("max1_k3_s2_p1", SIG, type="maxpool1d", kernel=3, stride=2, padding=1),
    _c("max1_k3_s1_p1", SIG, type="maxpool1d", kernel=3, stride=1, padding=1),
    _c("avg_pad_sides", IMG_B, type="avgpool2d", kernel=[2, 3], stride=1, padding=[0, 1, 1, 0]),
    _c("max1_pad_sides", SIG, type="maxpool1d", kernel=3, stride=2, padding=[0, 1]),
    _c("avg1_k2", SIG, type="avgpool1d", kernel=2),
    _c("avg1_k3_s2_p1", SIG, type="avgpool1d", kernel=3, stride=2, padding=1),
    _c("avg1_k3_s1_p1", SIG, type="avgpool1d", kernel=3, stride=1, padding=1),
    _c("gap_2d", IMG, type="global_avgpool"),
    _c("gap_1d", SIG, type="global_avgpool"),
    _c("gmp_2d", IMG, type="global_maxpool"),
    _c("gmp_1d", SIG, type="global_maxpool"),
    _c("gmp_row", ROW, type="global_maxpool"),
    # upsampling
    _c("up_nearest2", IMG, type="upsample2d", scale_factor=2),
    _c("up_nearest_pair", IMG_B, type="upsample2d", scale_factor=[3, 1]),
    _c("up_bilinear2", IMG, type="upsample2d", scale_factor=2, mode="bilinear"),
    _c("up_bilinear_pair", IMG_B, type="upsample2d", scale_factor=[1, 3], mode="bilinear"),
    _c("up_bilinear4", ROW, type="upsample2d", scale_factor=[4, 2], mode="bilinear"),  # one input row
    # dense
    _c("dense", FLAT, type="dense", units=4),
    _c("dense_nobias", FLAT, type="dense", units=3, bias=False),
    _c("dense_relu", FLAT, type="dense", units=5, activation="relu"),
    _c("dense_leaky", FLAT, type="dense", units=3, activation="leaky_relu"),
    _c("dense_sigmoid", FLAT, type="dense", units=3, activation="sigmoid"),
    _c("dense_tanh", FLAT, type="dense", units=2, activation="tanh", bias=False),
    _c("dense_softmax", FLAT, type="dense", units=4, activation="softmax"),
    # views and structure
    _c("flatten_2d", IMG_B, type="flatten"),
    _c("flatten_1d", SIG, type="flatten"),
    _c("flatten_flat", FLAT, type="flatten"),
    _c("dropout_flat", FLAT, type="dropout", rate=0.5),
    _c("dropout_img", IMG, type="dropout", rate=0.3),
    _c("bn_img", IMG, type="batchnorm", momentum=0.3, eps=1e-3),
    _c("bn_img_b", IMG_B, type="batchnorm"),
    _c("bn_sig", SIG, type="batchnorm", momentum=0.05),
    _c("bn_flat", FLAT, type="batchnorm", momentum=0.2),
    # BN_MAX_GROUP + 6 channels: the kernels' passes over groups of 64 and 6; 36 pixels: 2 x 16
    # partial-sum lanes + 4
    _c("bn_groups", (BN_MAX_GROUP + 6, 6, 6), type="batchnorm"),
    _c("bn_groups_b", (BN_MAX_GROUP + 6, 6, 6), type="batchnorm", momentum=0.4, eps=1e-2),
    # activations as layers
    _c("relu_img", IMG, type="relu"),
    _c("relu_flat", FLAT, type="relu"),
    _c("leaky_img", IMG_B, type="leaky_relu", alpha=0.2),
    _c("leaky_flat", FLAT, type="leaky_relu", alpha=0.2),
    _c("leaky_default", SIG, type="leaky_relu"),
    _c("sigmoid_img", IMG, type="sigmoid"),
    _c("sigmoid_flat", FLAT, type="sigmoid"),
    _c("tanh_sig", SIG, type="tanh"),
    _c("tanh_flat", FLAT, type="tanh"),
    _c("softmax_flat", FLAT, type="softmax"),
    _c("softmax_img", IMG, type="softmax"),
    _c("softmax_sig", SIG, type="softmax"),
    _c("linear_img", IMG_B, type="linear"),
    _c("linear_flat", FLAT, type="linear"),
    # add and concat
    _c("add2", IMG, type="add", wire=(0, 1)),
    _c("add3", FLAT, type="add", wire=(0, 1, 2)),
    _c("add_same_twice", SIG, type="add", wire=(0, 0)),
    _c("add_mixed", IMG_B, type="add", wire=(0, 1, 0)),
    _c("concat2", IMG, type="concat", wire=(0, 1), pre=(4, 2)),
    _c("concat3", SIG, type="concat", wire=(0, 1, 2), pre=(1, 4, 2)),
    _c("concat_flat", FLAT, type="concat", wire=(0, 1), pre=(3, 6)),
    _c("concat_same_twice", IMG_B, type="concat", wire=(0, 0)),
]

def test_every_registered_kind_has_cases():
    covered = {case.kind for case in CASES}
    missing = set(REGISTRY) - covered
    assert not missing, f"layer kinds without a test case in CASES: {sorted(missing)}"
    assert len({case.id.lower() for case in CASES}) == len(CASES)


def test_every_loss_is_tested():
    from cnncc.spec import LOSSES as SPEC_LOSSES

    assert set(SPEC_LOSSES) == {loss for _, _, loss in LOSS_SPECS.values()}


# ---------------------------------------------------------------------------------------
# the reference side of a case
# ---------------------------------------------------------------------------------------

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def to4(a):
    """(N, C, L) -> (N, C, 1, L); 4-D and flat unchanged."""
    return a[:, :, None, :] if a.ndim == 3 else a


def from4(a, ndim):
    return a[:, :, 0, :] if ndim == 3 else a


def conv_args(layer, in_shape):
    """reference.conv2d keyword arguments (on the 4-D view) for a conv2d/conv1d layer."""
    if layer["type"] == "conv1d":
        h, w = 1, in_shape[1]
        kernel = (1, layer["kernel"])
        stride, dilation = (1, layer.get("stride", 1)), (1, layer.get("dilation", 1))
        p = layer.get("padding", 0)
        pads = ((0, 0), ref.same_padding(w, kernel[1], stride[1], dilation[1])) if p == "same" else \
            ((0, 0), (0, 0)) if p == "valid" else ((0, 0), tuple(p)) if isinstance(p, list) else ((0, 0), (p, p))
    else:
        h, w = in_shape[1], in_shape[2]
        kernel = _pair(layer["kernel"])
        stride, dilation = _pair(layer.get("stride", 1)), _pair(layer.get("dilation", 1))
        p = layer.get("padding", 0)
        if p == "same":
            pads = (ref.same_padding(h, kernel[0], stride[0], dilation[0]),
                    ref.same_padding(w, kernel[1], stride[1], dilation[1]))
        elif p == "valid":
            pads = ((0, 0), (0, 0))
        elif isinstance(p, list) and len(p) == 4:  # [top, left, bottom, right]
            pads = ((p[0], p[2]), (p[1], p[3]))
        else:
            ph, pw = _pair(p)
            pads = ((ph, ph), (pw, pw))
    return dict(stride=stride, pad=pads[0] + pads[1], dilation=dilation, groups=layer.get("groups", 1))


def conv_transpose_args(layer):
    """reference.conv_transpose2d keyword arguments for a conv_transpose2d layer."""
    return dict(stride=layer.get("stride", 1), pad=layer.get("padding", 0),
                output_padding=layer.get("output_padding", 0), dilation=layer.get("dilation", 1),
                groups=layer.get("groups", 1))


def pool_args(layer):
    if layer["type"].endswith("1d"):
        k = layer["kernel"]
        s = layer.get("stride", k)
        p = layer.get("padding", 0)
        return (1, k), (1, s), (0, 0) + (tuple(p) if isinstance(p, list) else (p, p))
    k = _pair(layer["kernel"])
    s = _pair(layer.get("stride", layer["kernel"]))
    p = layer.get("padding", 0)
    if isinstance(p, list) and len(p) == 4:  # [top, left, bottom, right]
        return k, s, (p[0], p[2], p[1], p[3])
    ph, pw = _pair(p)
    return k, s, (ph, ph, pw, pw)


def act_forward(name, x, alpha=0.01):
    if name == "relu":
        return ref.relu(x)
    if name == "leaky_relu":
        return ref.leaky_relu(x, alpha)
    if name == "sigmoid":
        return ref.sigmoid(x)
    if name == "tanh":
        return ref.tanh(x)
    if name == "softmax":
        return ref.softmax(x, axis=1)
    assert name == "linear", name
    return ref.linear(x)


def act_backward(name, g, x, y, alpha=0.01):
    if name == "relu":
        return ref.relu_backward(g, x)
    if name == "leaky_relu":
        return ref.leaky_relu_backward(g, x, alpha)
    if name == "sigmoid":
        return ref.sigmoid_backward(g, y)
    if name == "tanh":
        return ref.tanh_backward(g, y)
    if name == "softmax":
        return ref.softmax_backward(g, y, axis=1)
    assert name == "linear", name
    return ref.linear_backward(g)


ACTIVATION_KINDS = ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear")


def ref_forward(layer, xs, P, training, c_out=None):
    """(y, aux) for the layer on inputs xs [N, ...] with parameters P (local names);
    aux carries what backward needs (pre-activation, dropout mask, new running stats)."""
    kind = layer["type"]
    x = xs[0]
    if kind in ("conv2d", "conv1d", "dense"):
        if kind == "dense":
            z = ref.dense(x, P["weight"], P.get("bias"))
        else:
            w4 = P["weight"][:, :, None, :] if kind == "conv1d" else P["weight"]
            z = from4(ref.conv2d(to4(x), w4, P.get("bias"), **conv_args(layer, x.shape[1:])), x.ndim)
        act = layer.get("activation", "linear")
        return act_forward(act, z), {"z": z}
    if kind in ("maxpool2d", "maxpool1d", "avgpool2d", "avgpool1d"):
        k, s, p = pool_args(layer)
        fn = ref.maxpool2d if kind.startswith("max") else ref.avgpool2d
        return from4(fn(to4(x), k, s, p), x.ndim), {}
    if kind == "global_avgpool":
        return ref.global_avgpool(to4(x)), {}
    if kind == "global_maxpool":
        return ref.global_maxpool(to4(x)), {}
    if kind == "conv_transpose2d":
        z = ref.conv_transpose2d(x, P["weight"], P.get("bias"), **conv_transpose_args(layer))
        return act_forward(layer.get("activation", "linear"), z), {"z": z}
    if kind == "upsample2d":
        return ref.upsample2d(x, layer["scale_factor"], layer.get("mode", "nearest")), {}
    if kind == "flatten":
        return x.reshape(x.shape[0], -1).copy(), {}
    if kind == "dropout":
        rate = layer.get("rate", 0.5)
        if not training:
            return x.copy(), {}
        mask = (np.asarray(c_out) != 0).astype(np.float64)  # the C RNG's mask (x is never 0)
        return ref.dropout(x, rate, mask), {"mask": mask}
    if kind == "batchnorm":
        momentum, eps = layer.get("momentum", 0.1), layer.get("eps", 1e-5)
        args = (to4(x), P["gamma"], P["beta"], P["running_mean"], P["running_var"])
        if training:
            y, rm, rv = ref.batchnorm_train(*args, momentum=momentum, eps=eps)
            return from4(y, x.ndim), {"running_mean": rm, "running_var": rv}
        return from4(ref.batchnorm_infer(*args, eps=eps), x.ndim), {}
    if kind in ACTIVATION_KINDS:
        return act_forward(kind, x, layer.get("alpha", 0.01)), {}
    if kind == "add":
        return ref.add(*xs), {}
    if kind == "concat":
        return ref.concat(xs, axis=1), {}
    raise AssertionError(f"no reference for layer kind {kind}")


def ref_backward(layer, g, xs, P, y, aux):
    """(input gradients, one per input; parameter gradients by local name) in training mode."""
    kind = layer["type"]
    x = xs[0]
    if kind in ("conv2d", "conv1d", "dense"):
        dz = act_backward(layer.get("activation", "linear"), g, aux["z"], y)
        has_bias = layer.get("bias", True)
        if kind == "dense":
            dx, dw, db = ref.dense_backward(dz, x, P["weight"], has_bias)
        else:
            w4 = P["weight"][:, :, None, :] if kind == "conv1d" else P["weight"]
            dx, dw, db = ref.conv2d_backward(to4(dz), to4(x), w4, has_bias, **conv_args(layer, x.shape[1:]))
            dx = from4(dx, x.ndim)
            dw = dw[:, :, 0, :] if kind == "conv1d" else dw
        return [dx], ({"weight": dw, "bias": db} if has_bias else {"weight": dw})
    if kind in ("maxpool2d", "maxpool1d"):
        k, s, p = pool_args(layer)
        return [from4(ref.maxpool2d_backward(to4(g), to4(x), k, s, p), x.ndim)], {}
    if kind in ("avgpool2d", "avgpool1d"):
        k, s, p = pool_args(layer)
        return [from4(ref.avgpool2d_backward(to4(g), to4(x).shape, k, s, p), x.ndim)], {}
    if kind == "global_avgpool":
        return [ref.global_avgpool_backward(g, to4(x).shape).reshape(x.shape)], {}
    if kind == "global_maxpool":
        return [ref.global_maxpool_backward(g, to4(x)).reshape(x.shape)], {}
    if kind == "conv_transpose2d":
        dz = act_backward(layer.get("activation", "linear"), g, aux["z"], y)
        has_bias = layer.get("bias", True)
        dx, dw, db = ref.conv_transpose2d_backward(dz, x, P["weight"], has_bias, **conv_transpose_args(layer))
        return [dx], ({"weight": dw, "bias": db} if has_bias else {"weight": dw})
    if kind == "upsample2d":
        return [ref.upsample2d_backward(g, x.shape, layer["scale_factor"], layer.get("mode", "nearest"))], {}
    if kind == "flatten":
        return [g.reshape(x.shape).copy()], {}
    if kind == "dropout":
        return [ref.dropout_backward(g, layer.get("rate", 0.5), aux["mask"])], {}
    if kind == "batchnorm":
        dx, dgamma, dbeta = ref.batchnorm_train_backward(to4(g), to4(x), P["gamma"], layer.get("eps", 1e-5))
        return [from4(dx, x.ndim)], {"gamma": dgamma, "beta": dbeta}
    if kind in ACTIVATION_KINDS:
        return [act_backward(kind, g, x, y, layer.get("alpha", 0.01))], {}
    if kind == "add":
        return ref.add_backward(g, len(xs)), {}
    if kind == "concat":
        return ref.concat_backward(g, [a.shape[1] for a in xs], axis=1), {}
    raise AssertionError(f"no reference backward for layer kind {kind}")


# ---------------------------------------------------------------------------------------
# compiling and running a group of cases
# ---------------------------------------------------------------------------------------

def spec_input(shape):
    """The spec's input section; a flat shape (K,) is a K-channel signal of length 1 (the
    group spec flattens it once)."""
    if len(shape) == 3:
        return {"channels": shape[0], "height": shape[1], "width": shape[2]}
    if len(shape) == 2:
        return {"channels": shape[0], "length": shape[1]}
    return {"channels": shape[0], "length": 1}


def pre_layer(name, shape, channels):
    """What feeds the layer under test: the identity as leaky_relu with alpha 1 (cheap to
    compile) or, to change the channel count, a linear 1x1 map without bias."""
    if channels == shape[0]:
        return {"name": name, "type": "leaky_relu", "alpha": 1.0}
    if len(shape) == 3:
        return {"name": name, "type": "conv2d", "filters": channels, "kernel": 1, "bias": False}
    if len(shape) == 2:
        return {"name": name, "type": "conv1d", "filters": channels, "kernel": 1, "bias": False}
    return {"name": name, "type": "dense", "units": channels, "bias": False}


def pre_matrix(m, case, k, in_channels):
    """The pre-layer's map as a [out, in] matrix (the identity for the leaky_relu one)."""
    key = f"{case.id}_pre{k}.weight"
    if key not in m.params:
        return np.eye(in_channels)
    return m.params[key].reshape(case.pre_out(k), in_channels).astype(np.float64)


def group_spec(cases, dtype, mode, name):
    """One model with a branch per case (see the module docstring). mode 'pre': the layer
    reads pre-layers; 'direct': it reads the network input itself."""
    shape = cases[0].shape
    layers = []
    if len(shape) == 1:  # a flat network input: a (K, 1) signal flattened once, shared
        layers.append({"name": "flat_input", "type": "flatten", "inputs": ["input"]})
    source = "flat_input" if len(shape) == 1 else "input"
    finals = []
    for case in cases:
        if mode == "pre":
            for k in range(case.n_pre):
                pre = pre_layer(f"{case.id}_pre{k}", shape, case.pre_out(k))
                pre["inputs"] = [source]
                layers.append(pre)
            inputs = [f"{case.id}_pre{k}" for k in case.wire]
        else:
            inputs = [source] * len(case.wire)
        layers.append({"name": case.id, **case.layer, "inputs": inputs})
        last = case.id
        if case.after:
            last = f"{case.id}_after"
            layers.append({"name": last, **case.after, "inputs": [case.id]})
        layers.append({"name": f"{case.id}_flat", "type": "flatten", "inputs": [last]})
        finals.append(f"{case.id}_flat")
    join(layers, finals)
    return {"name": name, "input": spec_input(shape), "dtype": dtype, "layers": layers, "loss": "mse"}


def join(layers, names, limit=16):
    """Concatenate the flat tensors `names` in order into a layer 'joined' (a concat takes at most
    16 inputs, so larger sets go through a tree of concats)."""
    assert len(names) >= 2
    level = 0
    while len(names) > limit:
        chunks = [names[i:i + limit] for i in range(0, len(names), limit)]
        names = []
        for i, chunk in enumerate(chunks):
            if len(chunk) == 1:
                names.append(chunk[0])
            else:
                layers.append({"name": f"joined_{level}_{i}", "type": "concat", "inputs": chunk})
                names.append(f"joined_{level}_{i}")
        level += 1
    layers.append({"name": "joined", "type": "concat", "inputs": names})


def network_input(shape, x):
    """The model's input array for per-sample values x [N, *shape]."""
    return x.reshape(x.shape[0], shape[0], 1) if len(shape) == 1 else x


def shape_tag(shape):
    return "x".join(map(str, shape))


def groups_of(cases):
    groups = {}
    for case in cases:
        groups.setdefault(case.shape, []).append(case)
    return groups


def read(m, name, batch, x):
    """A layer's output after the latest pass (the network input itself for a pure view of it)."""
    tensor = m.program.layer_outputs[name]
    if tensor.is_input:
        return x.reshape((batch,) + tuple(tensor.shape)).copy()
    return m.activation(name, batch).copy()


def set_random_params(m, rng):
    for key, view in m.params.items():
        layer, pname = key.split(".")
        if "_pre" in layer:
            out_c, in_c = view.shape[0], view.shape[1]
            view[...] = rng.normal(0, 1 / math.sqrt(in_c), (out_c, in_c)).reshape(view.shape)
        elif pname == "gamma":
            view[...] = 1 + 0.4 * rng.standard_normal(view.shape)
        elif pname == "running_var":
            view[...] = rng.uniform(0.5, 2.0, view.shape)
        else:
            view[...] = 0.5 * rng.standard_normal(view.shape)


@dataclass
class CaseResult:
    forward_infer: float = 0.0
    forward_train: float = 0.0
    running_stats: float = 0.0
    input_grads: float = 0.0
    param_grads: dict = field(default_factory=dict)  # local name -> C vs reference
    fd_params: dict = field(default_factory=dict)  # local name -> reference vs finite differences
    output_grad: np.ndarray | None = None  # the G this case's output received


@dataclass
class GroupResult:
    cases: dict
    fd_input: float | None
    model: object
    x: np.ndarray


def stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def run_group(shape, dtype, mode, build_dir, cflags=None, cases=None, name=None, fd=True, xs=None,
              backend="vector"):
    """Compile (or load) the group's model on `backend` and measure every check of every case."""
    cases = cases if cases is not None else GROUPS[shape]
    name = name or group_name(shape, dtype, mode)
    options = {"backend": backend} | ({} if cflags is None else {"cflags": cflags})
    m = cnncc.compile(group_spec(cases, dtype, mode, name), build_dir=build_dir, **options)
    rng = np.random.default_rng(stable_seed(shape, dtype, mode, name))
    set_random_params(m, rng)
    xs = kink_safe(rng, (N,) + shape) if xs is None else np.array(xs, dtype=np.float64)
    n = xs.shape[0]
    x = network_input(shape, xs)
    frozen = {k: v.copy() for k, v in m.params.items() if k.endswith(("running_mean", "running_var"))}
    results = {case.id: CaseResult() for case in cases}

    def params_of(case):
        prefix = case.id + "."
        return {k[len(prefix):]: v.astype(np.float64) for k, v in m.params.items() if k.startswith(prefix)}

    def inputs_of(case):
        if mode == "direct":
            return [xs.astype(m.dtype).astype(np.float64)] * len(case.wire)
        pres = [read(m, f"{case.id}_pre{k}", n, xs).astype(np.float64) for k in range(case.n_pre)]
        return [pres[k] for k in case.wire]

    # 1. inference-mode forward (batchnorm: the running statistics, set to random values)
    m.forward(x)
    for case in cases:
        y_ref, _ = ref_forward(case.layer, inputs_of(case), params_of(case), training=False)
        results[case.id].forward_infer = rel_err(read(m, case.id, n, xs), y_ref)

    # 2. training-mode forward (batch statistics, dropout mask) and the running-stat update
    m.loss(x, np.zeros((n,) + tuple(m.output_shape)), training=True, seed=SEED)
    y_final = m.last_output(n).astype(np.float64).copy()
    train = {}
    for case in cases:
        ins, P = inputs_of(case), params_of(case)
        P_before = {**P, **{k[len(case.id) + 1:]: v.astype(np.float64) for k, v in frozen.items()
                            if k.startswith(case.id + ".")}}
        c_out = read(m, case.id, n, xs).astype(np.float64)
        y_ref, aux = ref_forward(case.layer, ins, P_before, training=True, c_out=c_out)
        results[case.id].forward_train = rel_err(c_out, y_ref)
        if case.after:  # the layer after reads the C output, so each layer is checked on its own
            after_ref, _ = ref_forward(case.after, [c_out], {}, training=True)
            aux["after"] = read(m, f"{case.id}_after", n, xs).astype(np.float64)
            results[case.id].forward_train = max(results[case.id].forward_train, rel_err(aux["after"], after_ref))
        if "running_mean" in aux:
            results[case.id].running_stats = max(rel_err(P["running_mean"], aux["running_mean"]),
                                                 rel_err(P["running_var"], aux["running_var"]))
        train[case.id] = (ins, P_before, c_out, aux)
    for key, value in frozen.items():
        m.params[key][...] = value

    # 3. backward with a known output gradient G (the mse trick)
    numel = y_final.size
    # A small residual keeps the loss (and the rounding noise of its finite differences)
    # small next to its gradient: L ~ RESIDUAL^2, dL/dy ~ RESIDUAL / numel. In float32 the
    # targets are rounded to float first, as the C reads them, and a larger residual keeps
    # y - t's rounding (relative to y) small next to it.
    residual = RESIDUAL if dtype == "float64" else RESIDUAL32
    targets = (y_final - residual * rng.standard_normal(y_final.shape)).astype(m.dtype).astype(np.float64)
    g_final = 2 * (y_final - targets) / numel  # what the C loss computes (bit for bit in float64)
    _, grads = m.gradients(x, targets, seed=SEED)
    for key, value in frozen.items():  # gradients() leaves the running statistics alone
        assert np.array_equal(m.params[key], value), key
    expected_dx = np.zeros_like(xs)
    offset = 0
    for case in cases:
        ins, P, y, aux = train[case.id]
        final = aux.get("after", y)
        size = final[0].size
        g = g_final[:, offset:offset + size].reshape(final.shape)
        offset += size
        if case.after:
            g = ref_backward(case.after, g, [y], {}, final, {})[0][0]
        dins, dparams = ref_backward(case.layer, g, ins, P, y, aux)
        r = results[case.id]
        r.output_grad = g
        for pname, expected in dparams.items():
            r.param_grads[pname] = rel_err(grads[f"{case.id}.{pname}"], expected)
        if mode == "pre":
            for k in range(case.n_pre):
                expected = sum(d for d, w in zip(dins, case.wire) if w == k)
                actual = m.activation(f"{case.id}_pre{k}", n, grad=True)
                r.input_grads = max(r.input_grads, rel_err(actual, expected))
                expected_dx += np.einsum("kc,nk...->nc...", pre_matrix(m, case, k, shape[0]), expected)
        else:
            expected_dx += sum(dins)
        train[case.id] = (ins, P, y, aux, dparams)
    assert offset == g_final.shape[1]

    if not fd or dtype != "float64":
        return GroupResult(results, None, m, x)

    # 4. the reference backward against central differences of the C loss, at up to FD_POINTS
    # random elements of each tensor and along random directions through all of them (each costs
    # two runs of the whole group's network; the C gradients were compared with the reference at
    # every element above)
    x_checked, targets_checked = m.validated_inputs(x), m.validated_targets(targets, n)
    assert x_checked is x  # already the model's dtype and contiguous: perturbing x perturbs what f reads

    def f():  # the arrays validated once, not at each of the thousands of calls
        return m.loss(x_checked, targets_checked, training=True, seed=SEED, checked=True)

    def sampled(array, expected):
        at = np.sort(rng.choice(array.size, FD_POINTS, replace=False)) if array.size > FD_POINTS else None
        numeric = ref.numerical_gradient(f, array, at=at).reshape(np.shape(expected))
        picked = slice(None) if at is None else at
        expected = np.asarray(expected).reshape(-1)
        error = rel_err(numeric.reshape(-1)[picked], expected[picked])
        if at is None:
            return error
        # the elements no point reached, along random unit directions through all of them
        for _ in range(FD_DIRECTIONS):
            v = rng.standard_normal(array.shape)
            error = max(error, ref.directional_error(f, array, expected, v / np.linalg.norm(v)))
        return error

    for case in cases:
        for pname, expected in train[case.id][4].items():
            results[case.id].fd_params[pname] = sampled(m.params[f"{case.id}.{pname}"], expected)
    fd_input = sampled(x, expected_dx)  # perturbs x in place; f reads it
    for key, value in frozen.items():
        m.params[key][...] = value
    return GroupResult(results, fd_input, m, x)


# Finite differences per tensor: every element of one with up to FD_POINTS, else FD_POINTS random
# elements and FD_DIRECTIONS random directions through all of them (two runs of the group each)
FD_POINTS = 64
FD_DIRECTIONS = 4
GROUPS = groups_of(CASES)
WERROR = ("-O0", "-Wall", "-Wextra", "-Werror")
OPTIMISED_WERROR = (*DEFAULT_CFLAGS, "-Werror")
# (dtype, mode) -> C flags. The float64 and float32 checks run on the default optimised build
# (what users get) with warnings as errors: the proof that the template variants compile
# warning-free at the optimisation whose flow analysis finds the most. The input-reading
# variant runs unoptimised under -Werror: the same checks on code that cannot lean on -O3.
MODES = {("float64", "pre"): OPTIMISED_WERROR, ("float32", "pre"): OPTIMISED_WERROR, ("float64", "direct"): WERROR}


def group_name(shape, dtype, mode):
    return f"layers_{shape_tag(shape)}_{mode}_{dtype}"


@dataclass
class GroupErrors:
    """What the table's tests read of a group's run: its measured errors (no model or arrays)."""
    cases: dict  # case id -> CaseResult without its output_grad
    fd_input: float | None


CHECK_FIELDS = ("forward_infer", "forward_train", "running_stats", "input_grads", "param_grads", "fd_params")


@pytest.fixture(scope="module")
def group_runs(build_dir, compile_many, once_per_session):
    """The errors of each group's run, measured once per session: each xdist worker that gets any
    of the table's tests would otherwise repeat every group's finite differences."""
    cache, built = {}, set()

    def measure(shape, dtype, mode):
        cflags = MODES[(dtype, mode)]
        if (dtype, mode) not in built:  # compile every group of this mode at once, in parallel
            compile_many([group_spec(cases, dtype, mode, group_name(s, dtype, mode))
                          for s, cases in GROUPS.items()], cflags)
            built.add((dtype, mode))
        result = run_group(shape, dtype, mode, build_dir, cflags=cflags, fd=(mode == "pre"))
        return {"cases": {case_id: {f: getattr(r, f) for f in CHECK_FIELDS} for case_id, r in result.cases.items()},
                "fd_input": result.fd_input}

    def get(shape, dtype, mode):
        key = (shape, dtype, mode)
        if key not in cache:
            errors = once_per_session(f"layers_errors_{group_name(shape, dtype, mode)}",
                                      lambda: measure(shape, dtype, mode))
            cache[key] = GroupErrors({case_id: CaseResult(**fields) for case_id, fields in errors["cases"].items()},
                                     errors["fd_input"])
        return cache[key]

    return get


CASE_IDS = [case.id for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_float64(case, group_runs):
    r = group_runs(case.shape, "float64", "pre").cases[case.id]
    assert r.forward_infer <= TOL_FORWARD64, f"inference forward: relative error {r.forward_infer:.3g}"
    assert r.forward_train <= TOL_FORWARD64, f"training forward: relative error {r.forward_train:.3g}"
    assert r.running_stats <= TOL_FORWARD64, f"running statistics: relative error {r.running_stats:.3g}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_float64(case, group_runs):
    r = group_runs(case.shape, "float64", "pre").cases[case.id]
    assert r.input_grads <= TOL_BACKWARD64, f"input gradient: relative error {r.input_grads:.3g}"
    for pname, err in r.param_grads.items():
        assert err <= TOL_BACKWARD64, f"{pname} gradient: relative error {err:.3g}"
    expected_params = {"conv2d": 1, "conv1d": 1, "conv_transpose2d": 1, "dense": 1, "batchnorm": 2}.get(case.kind, 0)
    expected_params += int(case.kind in ("conv2d", "conv1d", "conv_transpose2d", "dense")
                           and case.layer.get("bias", True))
    assert len(r.param_grads) == expected_params


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_backward_matches_finite_differences(case, group_runs):
    r = group_runs(case.shape, "float64", "pre").cases[case.id]
    assert r.fd_params.keys() == r.param_grads.keys()
    for pname, err in r.fd_params.items():
        assert err <= TOL_FD, f"{pname}: reference gradient vs finite differences {err:.3g}"


@pytest.mark.parametrize("shape", list(GROUPS), ids=shape_tag)
def test_input_gradient_matches_finite_differences(shape, group_runs):
    err = group_runs(shape, "float64", "pre").fd_input
    assert err <= TOL_FD, f"dL/dx of the whole group: reference vs finite differences {err:.3g}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_float32(case, group_runs):
    r = group_runs(case.shape, "float32", "pre").cases[case.id]
    assert r.forward_infer <= TOL_FORWARD32, f"inference forward: relative error {r.forward_infer:.3g}"
    assert r.forward_train <= TOL_FORWARD32, f"training forward: relative error {r.forward_train:.3g}"
    assert r.running_stats <= TOL_FORWARD32, f"running statistics: relative error {r.running_stats:.3g}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_float32(case, group_runs):
    """The float32 kernels' gradients (other vector lane counts than float64's: other block forms
    and tails) against the reference's."""
    r = group_runs(case.shape, "float32", "pre").cases[case.id]
    assert r.input_grads <= TOL_BACKWARD32, f"input gradient: relative error {r.input_grads:.3g}"
    for pname, err in r.param_grads.items():
        assert err <= TOL_BACKWARD32, f"{pname} gradient: relative error {err:.3g}"
    assert r.param_grads.keys() == group_runs(case.shape, "float64", "pre").cases[case.id].param_grads.keys()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_layer_reading_the_network_input(case, group_runs):
    """The kernels' other variant: no input gradient when the layer reads the network input."""
    r = group_runs(case.shape, "float64", "direct").cases[case.id]
    assert r.forward_infer <= TOL_FORWARD64, f"inference forward: relative error {r.forward_infer:.3g}"
    assert r.forward_train <= TOL_FORWARD64, f"training forward: relative error {r.forward_train:.3g}"
    assert r.running_stats <= TOL_FORWARD64, f"running statistics: relative error {r.running_stats:.3g}"
    for pname, err in r.param_grads.items():
        assert err <= TOL_BACKWARD64, f"{pname} gradient: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_table_compiles_with_warnings_as_errors(dtype, compile_many):
    """The group models under -Wall -Wextra -Werror, optimised as users build them (the groups
    the checks above run on: built once, and found in the cache here when those ran first) and
    unoptimised (the input-reading groups of test_layer_reading_the_network_input)."""
    assert "-Werror" in MODES[(dtype, "pre")] and "-Werror" in MODES[("float64", "direct")]
    models = compile_many([group_spec(cases, dtype, "pre", group_name(s, dtype, "pre"))
                           for s, cases in GROUPS.items()], MODES[(dtype, "pre")])
    assert all(m.module.path.is_file() for m in models)


def lowered_ops(groups, mode="pre"):
    """The ops of each (shape, cases) group's network as lowered (float64), to see which kernel
    plans the cases take."""
    for shape, cases in groups:
        spec = load_spec(group_spec(cases, "float64", mode, group_name(shape, "float64", mode)))
        yield from lower(check_net(spec)).ops


def test_backward_through_the_pool_is_chosen_where_it_applies():
    """The table's conv -> maxpool cases take the pooled backward (ir.PooledBackward) where the
    conv has one group and the pool no more outputs than inputs (its argmax is kept in the place
    of its input's gradient); the others keep the backward at every pixel."""
    pooled = set()
    for mode in ("pre", "direct"):
        pooled |= {(mode, op.layer) for op in lowered_ops(GROUPS.items(), mode) if op.pooled}
    assert pooled == {(mode, case) for mode in ("pre", "direct") for case in ("conv_relu_pool", "c1_relu_pool")}


# ---------------------------------------------------------------------------------------
# random conv2d shapes
# ---------------------------------------------------------------------------------------

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def _sweep_layer(rng, c, h, w):
    """A random conv2d configuration valid on c x h x w, or None."""
    groups = int(rng.choice(_divisors(c)))
    layer = {"type": "conv2d", "filters": groups * int(rng.integers(1, 4)),
             "kernel": [int(k) for k in rng.integers(1, 6, 2)],
             "stride": [int(s) for s in rng.integers(1, 4, 2)],
             "dilation": [int(d) for d in rng.choice([1, 1, 2, 3], 2)],
             "groups": groups, "bias": bool(rng.random() < 0.7)}
    choice = rng.integers(0, 4)
    layer["padding"] = ["same", "valid", int(rng.integers(0, 3)), [int(p) for p in rng.integers(0, 3, 2)]][choice]
    args = conv_args(layer, (c, h, w))
    t, b, l, r = args["pad"]
    spans = [d * (k - 1) + 1 for k, d in zip(layer["kernel"], layer["dilation"])]
    if spans[0] > h + t + b or spans[1] > w + l + r:
        return None
    if layer["padding"] == "same" and (max(t, b) >= spans[0] or max(l, r) >= spans[1]):
        return None  # the checker refuses 'same' padding wider than the kernel span
    return layer


def sweep_specs():
    """(shape, cases) for ~40 random conv2d configurations in 4 models of 10 branches."""
    rng = np.random.default_rng(2024)
    specs = []
    for index in range(4):
        c = index + 1
        shape = (c, int(rng.integers(4, 10)), int(rng.integers(4, 10)))
        cases = []
        while len(cases) < 10:
            layer = _sweep_layer(rng, *shape)
            if layer is not None:
                cases.append(Case(f"sweep{index}_{len(cases)}", shape, layer))
        specs.append((shape, cases))
    return specs


SWEEP = sweep_specs()


@pytest.fixture(scope="module")
def sweep_runs(build_dir, compile_many):
    compile_many([group_spec(cases, "float64", "direct", f"sweep_{i}") for i, (_, cases) in enumerate(SWEEP)])
    return {}


@pytest.mark.parametrize("index", range(len(SWEEP)))
def test_random_conv2d_shapes(index, sweep_runs, build_dir):
    shape, cases = SWEEP[index]
    if index not in sweep_runs:
        sweep_runs[index] = run_group(shape, "float64", "direct", build_dir, cases=cases, name=f"sweep_{index}",
                                      fd=False)
    failures = []
    for case in cases:
        r = sweep_runs[index].cases[case.id]
        if max(r.forward_infer, r.forward_train) > TOL_FORWARD64 or max(r.param_grads.values()) > TOL_BACKWARD64:
            failures.append(f"{case.layer} on {shape}: forward {r.forward_infer:.3g}, grads {r.param_grads}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------
# every kernel variant and every block form of the matrix products
# ---------------------------------------------------------------------------------------
# The conv kernel is chosen by shape (cnncc/backends/vector/conv2d.py): stride 1 reads its patch matrix in place from
# the (padded) input, and then a 1-wide kernel skips the wide layout and a kernel whose padded
# output gradient is the output gradient itself (1x1, no padding) skips that copy; any other
# stride builds the patch matrix (im2col); with fewer than 16 filters per group the weight
# gradient is dot products, with more a product into its transpose. The products (gemm.c.j2)
# have full and partial row blocks, several column blocks and vector tails. The table above
# uses batch 3 and small images, so these cases are big enough (batch 11, up to 21 channels,
# 68 wide columns) for every form.
VARIANT_IMG = (5, 12, 13)
VARIANT_FLAT = (45,)
# The widest case in a group of its own: every finite difference runs its whole group's network,
# so the other variants' thousands of them would each pay for its 48 x 64 x 3 x 3 conv.
VARIANT_WIDE = (4, 12, 13)
VARIANT_BATCH = 11
VARIANT_TAPS = (3, 9, 21)  # output rows past one 16-pixel run of the weight gradient's dout transpose
VARIANT_PHASED = (2, 36, 70)  # strided convs whose output planes fill 32-column blocks
VARIANT_CASES = {
    VARIANT_IMG: [
        _c("shifted_wide_padded", VARIANT_IMG, type="conv2d", filters=19, kernel=3, padding=1, pre=(11,)),
        _c("shifted_wide_unpadded", VARIANT_IMG, type="conv2d", filters=14, kernel=[2, 4], dilation=[1, 2], pre=(9,)),
        _c("shifted_tall_cropped", VARIANT_IMG, type="conv2d", filters=9, kernel=[3, 1], padding=[1, 2]),
        # 16 filters: two 8-row blocks with 32 vector registers (not 12 + 4); 14 and 8 do it with 16
        _c("shifted_paired_rows", VARIANT_IMG, type="conv2d", filters=16, kernel=3, padding=1, pre=(5,)),
        _c("shifted_pointwise", VARIANT_IMG, type="conv2d", filters=17, kernel=1, pre=(11,)),
        _c("shifted_grouped", VARIANT_IMG, type="conv2d", filters=18, kernel=3, groups=2, padding="same", pre=(10,)),
        _c("depthwise_same", VARIANT_IMG, type="conv2d", filters=10, kernel=3, groups=10, padding="same", pre=(10,)),
        _c("depthwise_mult_dilated", VARIANT_IMG, type="conv2d", filters=12, kernel=[2, 3], groups=6, dilation=[1, 2],
           bias=False, pre=(6,)),
        # Winograd F(2x2, 3x3) forwards (3x3, stride 1, 16+ channels): an odd output width, a valid conv
        # with a relu and no bias (VARIANT_WIDE: asymmetric padding over two blocks of tile rows)
        _c("winograd_same", VARIANT_IMG, type="conv2d", filters=19, kernel=3, padding=1, pre=(17,)),
        _c("winograd_valid_relu", VARIANT_IMG, type="conv2d", filters=16, kernel=3, activation="relu", bias=False,
           pre=(16,)),
        # padding 3: the input gradient's conv would crop dout, so it stays the direct one
        _c("winograd_pad3", VARIANT_IMG, type="conv2d", filters=16, kernel=3, padding=3, pre=(16,)),
        _c("im2col_strided", VARIANT_IMG, type="conv2d", filters=10, kernel=3, stride=2, padding=1, pre=(11,)),
        _c("im2col_strided_many", VARIANT_IMG, type="conv2d", filters=21, kernel=[2, 3], stride=[2, 1], pre=(7,)),
        # backward through the maxpool after: a relu between or not, strides, padding, height dilation,
        # overlapping and padded pool windows
        _c("pooled_relu", VARIANT_IMG, type="conv2d", filters=8, kernel=3, padding=1, activation="relu", pre=(11,),
           after={"type": "maxpool2d", "kernel": 2}),
        _c("pooled_linear_strided", VARIANT_IMG, type="conv2d", filters=6, kernel=[2, 3], stride=2, pre=(3,),
           after={"type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1}),
        _c("pooled_winograd", VARIANT_IMG, type="conv2d", filters=16, kernel=3, padding=1, activation="relu",
           pre=(16,), after={"type": "maxpool2d", "kernel": 2}),
        _c("pooled_same_dilated", VARIANT_IMG, type="conv2d", filters=17, kernel=4, padding="same", dilation=[2, 1],
           activation="relu", bias=False, after={"type": "maxpool2d", "kernel": [2, 3], "stride": [1, 2]}),
    ],
    VARIANT_WIDE: [  # two blocks of tile rows, the last one short
        _c("winograd_blocks", VARIANT_WIDE, type="conv2d", filters=64, kernel=3, padding=[2, 1], pre=(48,)),
        # one filter short of the Winograd threshold (WINOGRAD_MIN_CHANNELS): the direct conv
        _c("below_winograd", VARIANT_WIDE, type="conv2d", filters=15, kernel=3, padding=1, pre=(16,)),
    ],
    # weight gradients by products whose rows are the input's taps (16+ filters): row blocks of
    # whole channels, 11 of 1x2 as 6 + 5 with 12-row blocks and 3 + 3 + 3 + 2 with 6, and of whole
    # kernel rows, 5x3 as 4 + 1 kernel rows with 12-row blocks and 2 + 2 + 1 with 6
    # (test_tap_row_blocks_are_covered); a group of their own keeps the finite differences of the
    # others from running their products
    VARIANT_TAPS: [
        _c("shifted_tap_channels", VARIANT_TAPS, type="conv2d", filters=16, kernel=[1, 2], pre=(11,)),
        _c("shifted_tap_kernel_rows", VARIANT_TAPS, type="conv2d", filters=17, kernel=[5, 3], padding=[2, 1]),
        # batchnorm's statistics in the backend's vectors of doubles (plane_moments: 189 pixels, whole
        # vectors and a tail) at every width (test_isa.py)
        _c("batchnorm_moments", VARIANT_TAPS, type="batchnorm", pre=(3,)),
    ],
    # strided input gradients by phases (_din_phases: output planes wide enough to fill the
    # products' column blocks): a 3x3, a 1x1 (three of its four phases read no output: zero) and a
    # dilated one with a stride along the width past its kernel (phases without taps both ways)
    VARIANT_PHASED: [
        _c("phased_strided", VARIANT_PHASED, type="conv2d", filters=7, kernel=3, stride=2, padding=1, pre=(3,)),
        _c("phased_pointwise", VARIANT_PHASED, type="conv2d", filters=5, kernel=1, stride=2, bias=False),
        _c("phased_dilated", VARIANT_PHASED, type="conv2d", filters=4, kernel=[3, 2], stride=[2, 3], dilation=[2, 1],
           padding=[2, 1], activation="relu"),
    ],
    VARIANT_FLAT: [
        _c("dense_wide", VARIANT_FLAT, type="dense", units=37),
        _c("dense_narrow", VARIANT_FLAT, type="dense", units=10, bias=False),
    ],
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", list(VARIANT_CASES), ids=shape_tag)
def test_every_kernel_variant_and_block_form(shape, dtype, build_dir):
    cases = VARIANT_CASES[shape]
    rng = np.random.default_rng(stable_seed("variants", shape))
    # users' flags under -Werror: the proof for this machine's vector width (test_isa.py builds the others)
    result = run_group(shape, dtype, "pre", build_dir, cases=cases, name=f"variants_{shape_tag(shape)}_{dtype}",
                       cflags=OPTIMISED_WERROR, xs=kink_safe(rng, (VARIANT_BATCH,) + shape))
    tolerance = TOL_FORWARD64 if dtype == "float64" else TOL_FORWARD32
    pooled = {op.layer for op in result.model.program.ops if op.pooled}
    assert pooled == {case.id for case in cases if case.id.startswith("pooled_")}
    for case in cases:
        r = result.cases[case.id]
        assert max(r.forward_infer, r.forward_train) <= tolerance, f"{case.id} forward: {r.forward_infer:.3g}"
        backward = TOL_BACKWARD64 if dtype == "float64" else TOL_BACKWARD32
        assert r.input_grads <= backward, f"{case.id} input gradient: {r.input_grads:.3g}"
        assert r.param_grads and max(r.param_grads.values()) <= backward, f"{case.id}: {r.param_grads}"
        if dtype == "float64":
            assert max(r.fd_params.values()) <= TOL_FD, f"{case.id} vs finite differences: {r.fd_params}"
    if dtype == "float64":
        assert result.fd_input <= TOL_FD


# Winograd forms only taller images reach: a block of tile rows past the first, by F(2x2, 3x3)
# (16 channels) and by F(4x4, 3x3) (32: 16 rows of 4x4 tiles, the last block short, whole tile
# columns: the variants' F(4x4) case has a cropped last column). Checked
# against the reference forward and backward only (test_winograd_forms_of_tall_images): the
# groups above check the same kernels against finite differences.
WINOGRAD_TALL = (16, 61, 12)
WINOGRAD_TALL_CASES = [
    _c("winograd_tall", WINOGRAD_TALL, type="conv2d", filters=16, kernel=3, padding=1),
    _c("winograd4_tall", WINOGRAD_TALL, type="conv2d", filters=32, kernel=3, padding=1, activation="relu", bias=False,
       pre=(32,)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_winograd_forms_of_tall_images(dtype, build_dir):
    rng = np.random.default_rng(stable_seed("winograd tall", dtype))
    result = run_group(WINOGRAD_TALL, dtype, "pre", build_dir, cases=WINOGRAD_TALL_CASES,
                       name=f"winograd_tall_{dtype}", xs=kink_safe(rng, (3,) + WINOGRAD_TALL), fd=False)
    for case in WINOGRAD_TALL_CASES:
        r = result.cases[case.id]
        forward = max(r.forward_infer, r.forward_train)
        assert forward <= (TOL_FORWARD64 if dtype == "float64" else TOL_FORWARD32), f"{case.id} forward: {forward:.3g}"
        if dtype == "float64":
            assert r.input_grads <= TOL_BACKWARD64, f"{case.id} input gradient: {r.input_grads:.3g}"
            assert r.param_grads and max(r.param_grads.values()) <= TOL_BACKWARD64, f"{case.id}: {r.param_grads}"


DEPTHWISE_CASES = {"conv_depthwise_b", "dw_same_relu", "dw_mult2_dilated", "dw_tall", "dw_pointwise", "dw_wide_pad",
                   "dw_cropped", "c1_depthwise", "c1_depthwise_mult", "depthwise_same", "depthwise_mult_dilated"}


def test_depthwise_convs_take_the_depthwise_kernel():
    """The stride-1 convs with one input channel per group (and a few filters each) of the table
    and the variants take the depthwise kernel, the strided one (conv_depthwise) and the others
    not; between them its plan's every variant is taken both ways."""
    from cnncc.backends.vector.conv2d import DEPTHWISE

    chosen, settings = set(), set()
    groups = list(GROUPS.items()) + [(shape, cases) for shape, cases in VARIANT_CASES.items()]
    for op in lowered_ops(groups):
        if op.plan.forward_template == DEPTHWISE:
            assert op.plan.backward_template == DEPTHWISE
            chosen.add(op.layer)
            flags = ("padded", "wide", "has_bias", "dout_is_dpad", "dwide_in_dpad")
            settings.add(tuple(op.plan.settings[f] for f in flags) + (op.plan.forward_dims["MULTIPLIER"] > 1,))
    assert chosen == DEPTHWISE_CASES
    for i in range(6):
        assert {combo[i] for combo in settings} == {False, True}, i


def tap_row_blocks(taps_per_channel_grid: tuple[int, int, int], nn_rows: int) -> set[str]:
    """The row-block forms (templates/gemm.c.j2, gemm_nn_tap_columns) of a product whose rows are
    CH x KH x KW taps, with blocks of at most nn_rows rows."""
    ch, kh, kw = taps_per_channel_grid
    if kh * kw == 1 or kw > nn_rows:
        return {"plain rows"}
    if kh * kw <= nn_rows:
        channels = nn_rows // (kh * kw)
        return {"whole channels"} | ({"channels left over"} if ch % channels else set())
    return {"kernel rows"} | ({"kernel rows left over"} if kh % min(nn_rows // kw, kh) else set())


def test_strided_input_gradients_go_by_phases_or_col2im():
    """The variants' strided convs take both input-gradient forms of the im2col backward, and the
    phased one with and without inputs no phase covers, and with and without padding dout."""
    from cnncc.backends.vector.conv2d import IM2COL

    by_phases, untouched, reads_dout = {}, set(), set()
    for op in lowered_ops(VARIANT_CASES.items()):
        if op.plan.backward_template == IM2COL and op.plan.settings["din"]:
            by_phases[op.layer] = op.plan.settings["din_by_phases"]
            if by_phases[op.layer]:
                untouched.add(op.plan.settings["din_untouched"])
                reads_dout.add(op.plan.settings["din_dout_is_dpad"])
    assert {k for k, v in by_phases.items() if v} >= {"phased_strided", "phased_pointwise", "phased_dilated"}
    assert {k for k, v in by_phases.items() if not v} >= {"im2col_strided"}  # 6 x 7 output planes
    assert untouched == {False, True} and reads_dout == {False, True}  # the 1x1 reads dout unpadded


def test_tap_row_blocks_are_covered():
    """The variants' weight gradients by products over the input's taps take every row-block form
    at 12-row blocks (AVX-512) and at 6 (AVX and the 16-byte fallback): test_isa.py builds and runs
    them at each width."""
    from cnncc.backends.vector.conv2d import SHIFTED

    grids = []
    for op in lowered_ops(VARIANT_CASES.items()):
        s = op.plan.settings
        if op.plan.backward_template == SHIFTED and s.get("dweight") and not s["dweight_by_dots"] \
                and not s["winograd_dweight"]:
            d = op.plan.backward_dims
            grids.append((d["C_IN_PER_GROUP"], d["KH"], d["KW"]))
    forms = {"whole channels", "channels left over", "kernel rows", "kernel rows left over"}
    for nn_rows in (12, 6):
        taken = set().union(*(tap_row_blocks(grid, nn_rows) for grid in grids))
        assert forms <= taken, (nn_rows, forms - taken)


WINOGRAD_CASES = {"conv_winograd", "winograd_same", "winograd_valid_relu", "winograd_blocks", "winograd_pad3",
                  "pooled_winograd", "winograd_tall", "winograd4_tall"}
WINOGRAD4_CASES = {"winograd_blocks", "winograd4_tall"}  # 32+ channels, 16+ tiles of 4x4


def test_winograd_forward_is_chosen_where_it_applies():
    """The 3x3 stride-1 convs with 16 or more input channels and filters of the table and the
    variants take the Winograd forward (with the shifted backward, whose input and weight
    gradients go by Winograd too, or the pooled backward), the others not, and those with 32 or
    more and 16 or more 4x4 tiles its F(4x4) form; between them each form's variants are taken
    both ways (bias, relu, an odd output width and height, more than one block of tile rows)."""
    from cnncc.backends.vector.conv2d import POOLED, SHIFTED, WINOGRAD

    chosen, forms, din_short_block, f4 = set(), set(), set(), set()
    groups = list(GROUPS.items()) + [(shape, cases) for shape, cases in VARIANT_CASES.items()] + \
        [(WINOGRAD_TALL, WINOGRAD_TALL_CASES)]
    for op in lowered_ops(groups):
        if op.plan.forward_template == WINOGRAD:
            assert op.plan.backward_template in (SHIFTED, POOLED)
            # the shifted backward's input gradient goes by Winograd too, unless its padding crops
            shifted_din = op.plan.backward_template == SHIFTED and op.layer != "winograd_pad3"
            assert op.plan.settings["winograd_din"] == shifted_din, op.layer
            if op.plan.settings["winograd_din"]:
                din_short_block.add("DIN_LAST_BLOCK_TILES" in op.plan.backward_dims)
            # and so does the shifted backward's weight gradient (every weight here is trained)
            assert op.plan.settings["winograd_dweight"] == (op.plan.backward_template == SHIFTED), op.layer
            chosen.add(op.layer)
            tile = op.plan.settings["winograd_tile"]
            if tile == 4:
                f4.add(op.layer)
            d = op.plan.forward_dims
            forms.add((tile, op.plan.settings["has_bias"], op.plan.settings["relu"], d["W_OUT"] % tile != 0,
                       d["H_OUT"] % tile != 0, d["TILE_ROWS"] > d["TILE_ROWS_PER_BLOCK"]))
    assert chosen == WINOGRAD_CASES and f4 == WINOGRAD4_CASES
    for i in range(1, 6):
        assert {form[i] for form in forms} == {False, True}, i
    for tile in (2, 4):  # each form with whole and cropped tile columns, over one block of tile rows and more
        assert {form[3] for form in forms if form[0] == tile} == {False, True}, tile
        assert {form[5] for form in forms if form[0] == tile} == {False, True}, tile
    assert din_short_block == {False, True}


def test_depthwise_and_winograd_kernels_at_batch_one(build_dir):
    """test_every_kernel_variant_and_block_form's float64 models at batch 1 (from the cache: the same
    flags): the depthwise and Winograd cases' forward and backward against the reference."""
    rng = np.random.default_rng(stable_seed("depthwise batch 1"))
    checked = set()
    for shape in (VARIANT_IMG, VARIANT_WIDE):
        cases = VARIANT_CASES[shape]
        result = run_group(shape, "float64", "pre", build_dir, cflags=OPTIMISED_WERROR, cases=cases,
                           name=f"variants_{shape_tag(shape)}_float64", xs=kink_safe(rng, (1,) + shape), fd=False)
        for case in cases:
            if case.id in DEPTHWISE_CASES | WINOGRAD_CASES:
                r = result.cases[case.id]
                forward = max(r.forward_infer, r.forward_train)
                assert forward <= TOL_FORWARD64, f"{case.id} forward: {forward:.3g}"
                assert r.input_grads <= TOL_BACKWARD64, f"{case.id} input gradient: {r.input_grads:.3g}"
                assert r.param_grads and max(r.param_grads.values()) <= TOL_BACKWARD64, f"{case.id}: {r.param_grads}"
                checked.add(case.id)
    assert "winograd_blocks" in checked and "depthwise_same" in checked


# ---------------------------------------------------------------------------------------
# the course notes' worked examples, exactly
# ---------------------------------------------------------------------------------------

def _example_layers(example, name):
    """The spec layers computing an example, the last one named `name`."""
    op = example["op"]
    if op == "conv2d":
        t, b, l, r = example["pad"]
        assert t == b and l == r
        f, _, kh, kw = example["w"].shape
        return [{"name": name, "type": "conv2d", "filters": f, "kernel": [kh, kw],
                 "stride": list(example["stride"]), "padding": [t, l], "dilation": list(example["dilation"]),
                 "groups": example["groups"], "bias": example["b"] is not None, "inputs": ["input"]}]
    if op == "conv1d":
        l, r = example["pad"]
        assert l == r
        f, _, k = example["w"].shape
        return [{"name": name, "type": "conv1d", "filters": f, "kernel": k, "stride": example["stride"],
                 "padding": l, "dilation": example["dilation"], "groups": example["groups"],
                 "bias": example["b"] is not None, "inputs": ["input"]}]
    if op in ("maxpool2d", "relu_maxpool2d"):
        t, b, l, r = example["pad"]
        pool = {"name": name, "type": "maxpool2d", "kernel": list(example["kernel"]),
                "stride": list(example["stride"]), "padding": [t, l], "inputs": ["input"]}
        if op == "maxpool2d":
            return [pool]
        return [{"name": f"{name}_relu", "type": "relu", "inputs": ["input"]}, {**pool, "inputs": [f"{name}_relu"]}]
    assert op == "softmax", op
    return [{"name": f"{name}_flat", "type": "flatten", "inputs": ["input"]},
            {"name": name, "type": "softmax", "inputs": [f"{name}_flat"]}]


def _seed_groups():
    groups = {}
    for example in seed_examples.ALL_EXAMPLES:
        groups.setdefault(example["x"].shape[1:], []).append(example)
    return groups


SEED_GROUPS = _seed_groups()


def _seed_spec(shape, examples, index):
    layers = []
    for k, example in enumerate(examples):
        layers += _example_layers(example, f"ex{k}")
    if len(shape) == 3:
        section = {"channels": shape[0], "height": shape[1], "width": shape[2]}
    elif len(shape) == 2:
        section = {"channels": shape[0], "length": shape[1]}
    else:
        section = {"channels": shape[0], "length": 1}
    return {"name": f"seed_examples_{index}", "input": section, "dtype": "float64", "layers": layers}


def test_every_seed_example_is_covered():
    assert sum(len(v) for v in SEED_GROUPS.values()) == len(seed_examples.ALL_EXAMPLES) >= 14


@pytest.fixture(scope="module")
def seed_models(compile_many):
    specs = [_seed_spec(shape, examples, i) for i, (shape, examples) in enumerate(SEED_GROUPS.items())]
    return compile_many(specs)


@pytest.mark.parametrize("index", range(len(SEED_GROUPS)),
                         ids=["+".join(e["name"] for e in exs) for exs in SEED_GROUPS.values()])
def test_seed_examples_through_the_compiled_c(index, seed_models):
    shape, examples = list(SEED_GROUPS.items())[index]
    m = seed_models[index]
    for k, example in enumerate(examples):
        if "w" in example:
            m.params[f"ex{k}.weight"][...] = example["w"]
            if example["b"] is not None:
                m.params[f"ex{k}.bias"][...] = example["b"]
    x = np.concatenate([e["x"] for e in examples])  # one sample per example
    if len(shape) == 1:
        x = x.reshape(len(examples), shape[0], 1)
    m.forward(x)
    for k, example in enumerate(examples):
        out = m.activation(f"ex{k}", len(examples))[k:k + 1]
        if example["op"] == "softmax":
            out = out.reshape(example["y"].shape)
        if example["op"] == "relu_maxpool2d":
            np.testing.assert_array_equal(m.activation(f"ex{k}_relu", len(examples))[k:k + 1], example["relu_out"])
        if example["y"] is not None:
            if example["atol"] == 0:
                np.testing.assert_array_equal(out, example["y"], err_msg=example["name"])
            else:
                np.testing.assert_allclose(out, example["y"], atol=example["atol"], rtol=0, err_msg=example["name"])
        else:
            assert out.shape == example["output_shape"], example["name"]
        for index_, value in example["y_entries"].items():
            assert out[index_] == value, (example["name"], index_, out[index_], value)


# ---------------------------------------------------------------------------------------
# max pool ties and padding, softmax stability, dropout statistics
# ---------------------------------------------------------------------------------------

TIE_CASES = [
    Case("tie_k2", (2, 4, 4), {"type": "maxpool2d", "kernel": 2}),
    Case("tie_k3_s1_p1", (2, 4, 4), {"type": "maxpool2d", "kernel": 3, "stride": 1, "padding": 1}),
    Case("tie_k2_s1", (2, 4, 4), {"type": "maxpool2d", "kernel": [2, 3], "stride": 1}),
]


def test_maxpool_ties_send_the_gradient_to_the_first_maximum_and_padding_never_wins(build_dir):
    xs = np.stack([
        np.ones((2, 4, 4)),  # every window a tie
        -np.ones((2, 4, 4)) - np.arange(32).reshape(2, 4, 4) % 3,  # all negative, with padding
        np.random.default_rng(5).integers(0, 3, (2, 4, 4)).astype(np.float64),  # many ties
    ])
    result = run_group((2, 4, 4), "float64", "pre", build_dir, cases=TIE_CASES, name="maxpool_ties", fd=False,
                       xs=xs)
    for case in TIE_CASES:
        r = result.cases[case.id]
        assert r.forward_infer == 0 and r.forward_train == 0, case.id
        assert r.input_grads == 0, case.id  # the reference sends a tie's gradient to the first maximum
    m = result.model
    # all-ones input, 2x2 windows: only the top-left cell of each window gets a gradient
    din = m.activation("tie_k2_pre0", 3, grad=True)[0, 0]
    g = result.cases["tie_k2"].output_grad[0, 0]
    expected = np.zeros((4, 4))
    expected[::2, ::2] = g
    np.testing.assert_array_equal(din, expected)
    # padding never wins: an all-negative input pooled with zero padding stays negative
    y = m.activation("tie_k3_s1_p1", 3)[1]
    assert (y < 0).all()
    np.testing.assert_array_equal(y, ref.maxpool2d(xs[1:2], 3, 1, 1)[0])


def test_softmax_is_numerically_stable(build_dir):
    spec = {"name": "softmax_stable", "input": {"channels": 3, "length": 1}, "dtype": "float64",
            "layers": [{"type": "flatten"}, {"name": "sm", "type": "softmax"}]}
    m = cnncc.compile(spec, build_dir=build_dir)
    x = np.array([[1000.0, 1001.0, 0.0], [-1000.0, -1001.0, -1002.0], [800.0, -800.0, 0.0]])
    y = m.forward(x[:, :, None])
    assert np.isfinite(y).all()
    e = math.e
    np.testing.assert_allclose(y[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(y, ref.softmax(x), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-15)


def test_dropout_statistics_and_mask(build_dir):
    rate = 0.3
    spec = {"name": "dropout_stats", "input": {"channels": 4, "length": 500}, "dtype": "float64",
            "layers": [{"name": "p1", "type": "leaky_relu", "alpha": 1.0},
                       {"name": "p2", "type": "leaky_relu", "alpha": 1.0, "inputs": ["input"]},
                       {"name": "d1", "type": "dropout", "rate": rate, "inputs": ["p1"]},
                       {"name": "d2", "type": "dropout", "rate": rate, "inputs": ["p2"]},
                       {"name": "j", "type": "concat", "inputs": ["d1", "d2"]}],
            "loss": "mse"}
    m = cnncc.compile(spec, build_dir=build_dir)
    n = 5
    x = kink_safe(np.random.default_rng(0), (n, 4, 500))
    # inference: the identity
    np.testing.assert_array_equal(m.forward(x)[:, :4], x)
    # training: about 1 - rate kept, kept values scaled by 1 / (1 - rate)
    zeros = np.zeros((n, 8, 500))
    m.loss(x, zeros, training=True, seed=11)
    y1, y2 = m.activation("d1", n).copy(), m.activation("d2", n).copy()
    kept1, kept2 = y1 != 0, y2 != 0
    for kept in (kept1, kept2):
        assert abs(kept.mean() - (1 - rate)) < 0.02
        for sample in kept:  # no sample (or channel) shares one mask
            assert 0.6 < sample.mean() < 0.8
    np.testing.assert_array_equal(y1[kept1], x[kept1] * (1 / (1 - rate)))
    assert (kept1 != kept2).mean() > 0.3  # the two layers draw different masks
    assert (kept1[0] != kept1[1]).mean() > 0.3  # and so do the samples
    m.loss(x, zeros, training=True, seed=11)
    np.testing.assert_array_equal(m.activation("d1", n), y1)  # the same seed, the same mask
    m.loss(x, zeros, training=True, seed=12)
    assert (m.activation("d1", n) != y1).mean() > 0.3  # another seed, another mask
    # backward uses the forward's mask: d/dx sum(G * y) = G * y / x
    m.loss(x, zeros, training=True, seed=11)
    y = m.last_output(n).copy()
    targets = y - RESIDUAL * np.random.default_rng(1).standard_normal(y.shape)
    g = 2 * (y - targets) / y.size
    m.gradients(x, targets, seed=11)
    np.testing.assert_allclose(m.activation("p1", n, grad=True), g[:, :4] * y1 / x, rtol=1e-12, atol=0)
    np.testing.assert_allclose(m.activation("p2", n, grad=True), g[:, 4:] * y2 / x, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------

LOSS_SPECS = {
    # name: (input section, layers, loss); the last layer with parameters is named 'last'
    "sce": ({"channels": 4, "length": 1},
            [{"type": "flatten"}, {"name": "last", "type": "dense", "units": 4}], "softmax_cross_entropy"),
    "mse_flat": ({"channels": 4, "length": 1},
                 [{"type": "flatten"}, {"name": "last", "type": "dense", "units": 3}], "mse"),
    "mse_4d": ({"channels": 2, "height": 5, "width": 4},
               [{"name": "last", "type": "conv2d", "filters": 2, "kernel": 3, "padding": 1}], "mse"),
    "bce": ({"channels": 3, "length": 1},
            [{"type": "flatten"}, {"name": "last", "type": "dense", "units": 3, "activation": "sigmoid"}],
            "binary_cross_entropy"),
    "bce_4d": ({"channels": 2, "height": 5, "width": 4},
               [{"name": "last", "type": "conv2d", "filters": 2, "kernel": 3, "activation": "sigmoid"}],
               "binary_cross_entropy"),
    "bce_layer": ({"channels": 3, "length": 1},
                  [{"type": "flatten"}, {"name": "last", "type": "dense", "units": 2},
                   {"name": "prob", "type": "sigmoid"}], "binary_cross_entropy"),
}


def _loss_spec(key, dtype):
    section, layers, loss = LOSS_SPECS[key]
    return {"name": f"loss_{key}_{dtype}", "input": section, "dtype": dtype, "layers": layers, "loss": loss}


def _loss_problem(key, m, rng, n=3):
    x = rng.standard_normal((n,) + tuple(m.input_shape))
    loss = LOSS_SPECS[key][2]
    out = (n,) + tuple(m.output_shape)
    if loss == "softmax_cross_entropy":
        return x, rng.integers(0, m.output_shape[0], n)
    if loss == "mse":
        return x, rng.standard_normal(out)
    return x, rng.uniform(0, 1, out)


def _reference_loss(key, m, x, t):
    """(loss, dL/dlogits, logits) from the reference, with the last layer's parameters."""
    w = m.params["last.weight"].astype(np.float64)
    b = m.params["last.bias"].astype(np.float64)
    xin = x.reshape(x.shape[0], -1) if "4d" not in key else x
    z = ref.dense(xin, w, b) if w.ndim == 2 else ref.conv2d(x, w, b, pad=LOSS_SPECS[key][1][0].get("padding", 0))
    loss = LOSS_SPECS[key][2]
    if loss == "softmax_cross_entropy":
        value, dz = ref.softmax_cross_entropy(z, t)
    elif loss == "mse":
        value, dz = ref.mse(z, t)
    else:
        value, dz = ref.binary_cross_entropy_with_logits(z, t)
    return value, dz, xin, z


@pytest.fixture(scope="module")
def loss_models(compile_many):
    keys = list(LOSS_SPECS)
    models = compile_many([_loss_spec(k, "float64") for k in keys] + [_loss_spec(k, "float32") for k in keys])
    return {(k, "float64"): m for k, m in zip(keys, models)} | {(k, "float32"): m for k, m in
                                                                  zip(keys, models[len(keys):])}


@pytest.mark.parametrize("key", list(LOSS_SPECS))
def test_loss_against_reference_and_finite_differences(key, loss_models):
    m = loss_models[(key, "float64")]
    rng = np.random.default_rng(stable_seed(key))
    m.init(3)
    m.params["last.bias"][...] = rng.standard_normal(m.params["last.bias"].shape)
    x, t = _loss_problem(key, m, rng)
    value, dz, xin, z = _reference_loss(key, m, x, t)
    assert rel_err(m.loss(x, t), value) <= TOL_FORWARD64
    assert rel_err(m.loss(x, t, training=False), value) <= TOL_FORWARD64
    c_value, grads = m.gradients(x, t)
    assert rel_err(c_value, value) <= TOL_FORWARD64
    if m.params["last.weight"].ndim == 2:
        dx, dw, db = ref.dense_backward(dz, xin, m.params["last.weight"], True)
    else:
        dx, dw, db = ref.conv2d_backward(dz, x, m.params["last.weight"], True,
                                         pad=LOSS_SPECS[key][1][0].get("padding", 0))
    assert rel_err(grads["last.weight"], dw) <= TOL_BACKWARD64
    assert rel_err(grads["last.bias"], db) <= TOL_BACKWARD64

    def f():
        return m.loss(x, t)

    assert rel_err(ref.numerical_gradient(f, m.params["last.weight"]), dw) <= TOL_FD
    assert rel_err(ref.numerical_gradient(f, m.params["last.bias"]), db) <= TOL_FD
    assert rel_err(ref.numerical_gradient(f, x).reshape(dx.shape), dx) <= TOL_FD
    # float32: the same loss within 1e-5
    m32 = loss_models[(key, "float32")]
    for k in m.params:
        m32.params[k][...] = m.params[k]
    assert rel_err(m32.loss(x, t), value) <= TOL_FORWARD32


def test_softmax_cross_entropy_is_stable_for_huge_logits(loss_models):
    m = loss_models[("sce", "float64")]
    m.params["last.weight"][...] = np.eye(4)
    m.params["last.bias"][...] = 0
    x = np.array([[1000.0, 1001.0, 0.0, -1000.0], [-1000.0, -1001.0, -1002.0, -1003.0]])[:, :, None]
    labels = np.array([0, 3])
    value, grads = m.gradients(x, labels)
    expected, dz = ref.softmax_cross_entropy(x[:, :, 0], labels)
    assert math.isfinite(value) and rel_err(value, expected) <= TOL_FORWARD64
    # the first row: log(1 + e) - 0 ... = 1000 + log(1 + e) + ... - 1000
    assert rel_err(m.loss(x[:1], labels[:1]), math.log1p(math.e) + math.log1p(math.exp(-1001) + math.exp(-2001))) \
        <= 1e-12
    assert np.isfinite(grads["last.weight"]).all()
    assert rel_err(grads["last.bias"], dz.sum(axis=0)) <= TOL_BACKWARD64


def test_binary_cross_entropy_is_stable_for_huge_logits(loss_models):
    m = loss_models[("bce", "float64")]
    m.params["last.weight"][...] = np.eye(3)
    m.params["last.bias"][...] = 0
    z = np.array([[800.0, -800.0, 0.5], [-50.0, 40.0, 0.0]])
    t = np.array([[0.0, 1.0, 0.3], [1.0, 0.0, 0.5]])
    value, grads = m.gradients(z[:, :, None], t)
    expected, dz = ref.binary_cross_entropy_with_logits(z, t)
    assert math.isfinite(value) and rel_err(value, expected) <= TOL_FORWARD64
    by_hand = (800 + 800 + (0.5 - 0.15 + math.log1p(math.exp(-0.5))) + (50 + math.log1p(math.exp(-50)))
               + (40 + math.log1p(math.exp(-40))) + math.log(2)) / 6
    assert rel_err(value, by_hand) <= 1e-12
    assert rel_err(grads["last.bias"], dz.sum(axis=0)) <= TOL_BACKWARD64
    np.testing.assert_array_equal(m.forward(z[:, :, None])[0, :2], [1.0, 0.0])  # saturated, not NaN

"""The NumPy integer reference of every int8 kernel, written as TFLite's reference kernels are
(not as the C is): a conv sums (x - z_in) * w over the taps inside the input, skipping the
padding, adds the int32 bias and requantizes. The C kernels must equal these bit for bit.

Products are summed as float64 matrix products: every partial sum is an integer below 2^53
(at most 255 * 127 per tap), so the sums are exact, and fast.
"""
from __future__ import annotations

import numpy as np

from . import arith, blobs
from .graph import QGraph, chw
from .layout import Layout
from .scheme import ADD_LEFT_SHIFT, QMAX, QMIN, QValues


def _finish(acc, multiplier, shift, zero, lo, hi) -> np.ndarray:
    out = arith.requantize(acc, multiplier, shift) + zero
    return np.clip(out, lo, hi).astype(np.int8)


def conv(x, op, values, layout) -> np.ndarray:
    d = op.dims
    n = x.shape[0]
    z_in = values.zero_points[op.inputs[0]]
    planes = x.reshape(n, d["C_IN"], d["H_IN"], d["W_IN"]).astype(np.int64) - z_in
    # the input's real zero is (z_in - z_in) = 0, so padding (skipped by TFLite) adds nothing
    pad_h = max(0, (d["H_OUT"] - 1) * d["STRIDE_H"] + (d["KH"] - 1) * d["DIL_H"] + 1 - d["H_IN"] - d["PAD_TOP"])
    pad_w = max(0, (d["W_OUT"] - 1) * d["STRIDE_W"] + (d["KW"] - 1) * d["DIL_W"] + 1 - d["W_IN"] - d["PAD_LEFT"])
    padded = np.pad(planes, ((0, 0), (0, 0), (d["PAD_TOP"], pad_h), (d["PAD_LEFT"], pad_w)))
    weights = blobs.weights(values, layout, op).astype(np.float64).reshape(
        d["GROUPS"], d["C_OUT_PER_GROUP"], d["C_IN_PER_GROUP"], d["KH"], d["KW"])
    acc = np.zeros((n, d["GROUPS"], d["C_OUT_PER_GROUP"], d["H_OUT"], d["W_OUT"]))
    grouped = padded.reshape(n, d["GROUPS"], d["C_IN_PER_GROUP"], *padded.shape[2:]).astype(np.float64)
    for kh in range(d["KH"]):
        for kw in range(d["KW"]):
            top, left = kh * d["DIL_H"], kw * d["DIL_W"]
            tap = grouped[:, :, :, top:top + (d["H_OUT"] - 1) * d["STRIDE_H"] + 1:d["STRIDE_H"],
                          left:left + (d["W_OUT"] - 1) * d["STRIDE_W"] + 1:d["STRIDE_W"]]
            acc += np.einsum("ngihw,goi->ngohw", tap, weights[:, :, :, kh, kw])
    acc = acc.reshape(n, d["C_OUT"], d["H_OUT"] * d["W_OUT"]).astype(np.int64)
    acc += blobs.true_bias(values, layout, op)[None, :, None]
    lo, hi = values.clamp(op)
    out = _finish(acc, blobs.words(values, layout, op, "multiplier")[None, :, None],
                  blobs.words(values, layout, op, "shift")[None, :, None], values.zero_points[op.output], lo, hi)
    return out.reshape(n, -1)


def dense(x, op, values, layout) -> np.ndarray:
    weights = blobs.weights(values, layout, op).astype(np.float64)
    inputs = x.astype(np.float64) - values.zero_points[op.inputs[0]]
    acc = (inputs @ weights.T).astype(np.int64) + blobs.true_bias(values, layout, op)[None, :]
    lo, hi = values.clamp(op)
    return _finish(acc, blobs.words(values, layout, op, "multiplier")[None, :],
                   blobs.words(values, layout, op, "shift")[None, :], values.zero_points[op.output], lo, hi)


def _windows(x, op, fill):
    """[n, C, H_OUT, W_OUT, KH*KW] windows of the input, padding filled with `fill`."""
    d = op.dims
    planes = x.reshape(x.shape[0], d["C"], d["H_IN"], d["W_IN"]).astype(np.int64)
    need_h = (d["H_OUT"] - 1) * d["STRIDE_H"] + d["KH"]
    need_w = (d["W_OUT"] - 1) * d["STRIDE_W"] + d["KW"]
    padded = np.pad(planes, ((0, 0), (0, 0), (d["PAD_TOP"], max(0, need_h - d["H_IN"] - d["PAD_TOP"])),
                             (d["PAD_LEFT"], max(0, need_w - d["W_IN"] - d["PAD_LEFT"]))), constant_values=fill)
    taps = [padded[:, :, kh:kh + (d["H_OUT"] - 1) * d["STRIDE_H"] + 1:d["STRIDE_H"],
                   kw:kw + (d["W_OUT"] - 1) * d["STRIDE_W"] + 1:d["STRIDE_W"]]
            for kh in range(d["KH"]) for kw in range(d["KW"])]
    return np.stack(taps, axis=-1)


def maxpool(x, op, values, layout) -> np.ndarray:
    """The maximum of the window's values inside the input (padding never wins)."""
    return _windows(x, op, QMIN - 1).max(axis=-1).astype(np.int8).reshape(x.shape[0], -1)


def avgpool(x, op, values, layout) -> np.ndarray:
    """TFLite's rounding of the mean; padding counts as real zeros (the zero point) and the divisor
    is always KH*KW, as the float model's average pool."""
    total = _windows(x, op, values.zero_points[op.inputs[0]]).sum(axis=-1)
    out = arith.rounded_divide(total, op.dims["KH"] * op.dims["KW"])
    return np.clip(out, QMIN, QMAX).astype(np.int8).reshape(x.shape[0], -1)


def global_avgpool(x, op, values, layout) -> np.ndarray:
    d = op.dims
    total = x.reshape(x.shape[0], d["C"], d["SPATIAL"]).astype(np.int64).sum(axis=-1)
    return np.clip(arith.rounded_divide(total, d["SPATIAL"]), QMIN, QMAX).astype(np.int8)


def add(xs, op, values, layout) -> np.ndarray:
    """TFLite's int8 add, for any number of inputs: each input, offset by its zero point and shifted
    left by 20, is rescaled to (2 * the largest input scale); the sum is rescaled to the output."""
    n = len(xs)
    mult = blobs.words(values, layout, op, "multiplier")
    shift = blobs.words(values, layout, op, "shift")
    total = 0
    for i, (x, name) in enumerate(zip(xs, op.inputs)):
        shifted = (x.astype(np.int64) - values.zero_points[name]) * (1 << ADD_LEFT_SHIFT)
        total = total + arith.requantize(shifted, mult[i], shift[i])
    lo, hi = values.clamp(op)
    return _finish(total, mult[n], shift[n], values.zero_points[op.output], lo, hi)


def concat(xs, op, values, layout) -> np.ndarray:
    """Each input requantized to the output's scale and zero point, joined along channels."""
    mult = blobs.words(values, layout, op, "multiplier")
    shift = blobs.words(values, layout, op, "shift")
    parts = [_finish(x.astype(np.int64) - values.zero_points[name], mult[i], shift[i],
                     values.zero_points[op.output], QMIN, QMAX).reshape(x.shape[0], op.dims[f"C_IN{i}"], -1)
             for i, (x, name) in enumerate(zip(xs, op.inputs))]
    return np.concatenate(parts, axis=1).reshape(xs[0].shape[0], -1)


def lut(x, op, values, layout) -> np.ndarray:
    return blobs.table(values, layout, op)[x.astype(np.int64) - QMIN]


KERNELS = {"conv": conv, "dense": dense, "maxpool": maxpool, "avgpool": avgpool, "global_avgpool": global_avgpool,
           "lut": lut}
MULTI_INPUT = {"add": add, "concat": concat}


def run(graph: QGraph, values: QValues, layout: Layout, x_q: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the int8 network for int8 inputs [N, ...]: name -> int8 [N, size]."""
    n = x_q.shape[0]
    tensors = {graph.input: np.asarray(x_q, np.int8).reshape(n, -1)}
    for op in graph.ops:
        if op.kind in MULTI_INPUT:
            out = MULTI_INPUT[op.kind]([tensors[name] for name in op.inputs], op, values, layout)
        else:
            out = KERNELS[op.kind](tensors[op.inputs[0]], op, values, layout)
        tensors[op.output] = np.asarray(out, np.int8).reshape(n, -1)
    return tensors


__all__ = ["run", "chw"]

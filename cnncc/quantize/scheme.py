"""The quantization scheme (TFLite's int8 specification): float weights and calibrated ranges
-> tensor scales and zero points, int8 weights, int32 biases, multipliers and shifts, tables.

    activations   real = scale * (q - zero_point), q in [-128, 127], one scale per tensor, the
                  range widened to hold 0 (TFLite's ChooseQuantizationParams)
    weights       q in [-127, 127], zero point 0; one scale per output channel for convs
                  (depthwise and grouped too), one per tensor for dense
    biases        int32, scale = input scale * weight scale; stored with the input zero point's
                  term folded in: bias - z_in * sum(weights of the channel)
    requantize    acc * (s_in * s_w / s_out) as a 32-bit multiplier and shift (arith.py)
    batchnorm     folded first: w' = w * gamma / sqrt(var + eps), b' = (b - mean) * that + beta
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import arith
from .graph import LUT_SIZE, QGraph, QuantizeError
from .layout import Layout

ADD_LEFT_SHIFT = 20  # TFLite's headroom for add: inputs are scaled by 2^20 before rescaling
QMIN, QMAX = -128, 127
WEIGHT_MAX = 127


def round_away(x):
    """Round half away from zero (C's round, TFLite's TfLiteRound)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def choose_params(lo: float, hi: float) -> tuple[float, int]:
    """The (scale, zero point) of a tensor observed in [lo, hi]: the range widened to contain 0,
    scale = range / 255, zero point rounded and clamped to [-128, 127]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QuantizeError(f"a calibrated range is not finite: [{lo}, {hi}]")
    if hi - lo <= 0:
        return 1.0, QMIN  # a constant 0: any scale represents it
    scale = (hi - lo) / (QMAX - QMIN)
    zero = int(round_away(QMIN - lo / scale))
    return scale, min(QMAX, max(QMIN, zero))


@dataclass(frozen=True)
class QValues:
    """Everything quantization decides, in the two blobs the C reads plus the tensors' parameters."""
    scales: dict[str, float]
    zero_points: dict[str, int]
    weights: np.ndarray  # int8 blob
    words: np.ndarray  # int32 blob

    def clamp(self, op) -> tuple[int, int]:
        """The output clamp of an op: relu clamps at the quantized 0."""
        if op.clamp == "relu":
            return max(QMIN, self.zero_points[op.output]), QMAX
        return QMIN, QMAX


def tensor_params(graph: QGraph, ranges: dict[str, tuple[float, float]]) -> tuple[dict, dict]:
    scales, zeros = {}, {}
    for name, tensor in graph.tensors.items():
        if tensor.fixed is not None:
            scales[name], zeros[name] = tensor.fixed
        elif tensor.same_as is None:
            scales[name], zeros[name] = choose_params(*ranges[name])
    for name, tensor in graph.tensors.items():  # pools follow their inputs (graph order: inputs first)
        source = name
        while graph.tensors[source].same_as is not None:
            source = graph.tensors[source].same_as
        scales[name], zeros[name] = scales[source], zeros[source]
    return scales, zeros


def folded(op, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(weights [C_OUT, K], bias [C_OUT]) in float64 with the op's batchnorm folded in."""
    weight = np.asarray(params[f"{op.param_layer}.weight"], np.float64).reshape(op.dims["C_OUT"], -1)
    bias_key = f"{op.param_layer}.bias"
    bias = np.asarray(params[bias_key], np.float64) if bias_key in params else np.zeros(op.dims["C_OUT"])
    if op.batchnorm:
        bn = {name: np.asarray(params[f"{op.batchnorm}.{name}"], np.float64)
              for name in ("gamma", "beta", "running_mean", "running_var")}
        factor = bn["gamma"] / np.sqrt(bn["running_var"] + op.bn_eps)
        weight = weight * factor[:, None]
        bias = (bias - bn["running_mean"]) * factor + bn["beta"]
    return weight, bias


def _int32(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and (values.min() < arith.INT32_MIN or values.max() > arith.INT32_MAX):
        raise QuantizeError(f"{what} does not fit in int32 (a weight scale far smaller than its input's?)")
    return values.astype(np.int64)


def _multipliers(reals) -> tuple[list[int], list[int]]:
    pairs = [arith.quantize_multiplier(float(r)) for r in reals]
    return [m for m, _ in pairs], [s for _, s in pairs]


def _lut(op, s_in: float, z_in: int, s_out: float, z_out: int) -> np.ndarray:
    """The table of an element-wise activation, as TFLite's LUT kernels fill theirs: dequantize
    every int8 value, apply the function, requantize (round half away, clamp)."""
    x = s_in * (np.arange(QMIN, QMAX + 1, dtype=np.float64) - z_in)
    y = {"sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "tanh": np.tanh,
         "relu": lambda v: np.maximum(v, 0.0),
         "leaky_relu": lambda v: np.where(v > 0, v, op.alpha * v)}[op.function](x)
    return np.clip(round_away(y / s_out) + z_out, QMIN, QMAX)


def quantize_values(graph: QGraph, layout: Layout, params: dict[str, np.ndarray],
                    ranges: dict[str, tuple[float, float]]) -> QValues:
    """The int8 model of `graph` from its float parameters (Model.params) and calibrated ranges."""
    scales, zeros = tensor_params(graph, ranges)
    weights = np.zeros(layout.weight_count, np.int64)
    words = np.zeros(layout.word_count, np.int64)
    for op in graph.ops:
        at = layout.word_offsets[op.name]
        s_out, z_out = scales[op.output], zeros[op.output]
        if op.kind in ("conv", "dense"):
            s_in, z_in = scales[op.inputs[0]], zeros[op.inputs[0]]
            weight, bias = folded(op, params)
            extent = np.abs(weight).max(axis=1) if op.kind == "conv" else np.full(len(weight), np.abs(weight).max())
            w_scale = np.where(extent > 0, extent / WEIGHT_MAX, 1.0)
            q = np.clip(round_away(weight / w_scale[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
            bias_q = _int32(round_away(bias / (s_in * w_scale)), f"layer '{op.param_layer}': a quantized bias")
            folded_bias = _int32(bias_q - z_in * q.sum(axis=1), f"layer '{op.param_layer}': a bias with the "
                                                                 "input zero point folded in")
            m, s = _multipliers(s_in * w_scale / s_out)
            start = layout.weight_offsets[op.name]
            weights[start:start + q.size] = q.ravel()
            c = op.dims["C_OUT"]
            words[at["bias"]:at["bias"] + c] = folded_bias
            words[at["multiplier"]:at["multiplier"] + c] = m
            words[at["shift"]:at["shift"] + c] = s
        elif op.kind == "add":
            in_scales = [scales[name] for name in op.inputs]
            twice_max = 2.0 * max(in_scales)
            m, s = _multipliers([si / twice_max for si in in_scales] + [twice_max / ((1 << ADD_LEFT_SHIFT) * s_out)])
            n = len(m)
            words[at["multiplier"]:at["multiplier"] + n] = m
            words[at["shift"]:at["shift"] + n] = s
        elif op.kind == "concat":
            m, s = _multipliers([scales[name] / s_out for name in op.inputs])
            words[at["multiplier"]:at["multiplier"] + len(m)] = m
            words[at["shift"]:at["shift"] + len(m)] = s
        elif op.kind == "lut":
            start = layout.weight_offsets[op.name]
            weights[start:start + LUT_SIZE] = _lut(op, scales[op.inputs[0]], zeros[op.inputs[0]], s_out, z_out)
    return QValues(scales, zeros, weights.astype(np.int8), words.astype(np.int32))

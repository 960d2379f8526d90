"""The float <-> int8 boundary of a quantized model, written once.

    quantize_real(x, scale, zero)     q = clamp(round(x / scale) + zero), the division in float64,
                                      rounding half away from zero (QuantizedModel.quantize_input)
    dequantize_real(q, scale, zero)   float32(scale * (q - zero)), in float64 (dequantize_output)
    input_thresholds(scale, zero)     the same quantization as 255 float32 thresholds
    output_texts(scale, zero)         the 256 dequantized values as the host's printf("%.9g") text

The tables are for a target that must give exactly these results without double arithmetic
(the Cortex-M4's FPU is single precision, and soft-float double would differ from nothing but
cost code): q is a non-decreasing function of the float32 input (a correctly rounded division by
a positive constant, a rounding and a clamp are each monotonic), so it is fixed by the least
float32 at which it reaches each level, and a float32 comparison against those is exact. The
same holds for the output: 256 int8 values have 256 dequantized values, and their text.
"""
from __future__ import annotations

import numpy as np

from .scheme import QMAX, QMIN, round_away

LEVELS = QMAX - QMIN + 1  # 256 int8 values


def quantize_real(x, scale: float, zero: int) -> np.ndarray:
    """int8 of real values: clamp(round(x / scale) + zero), in float64, rounding half away from zero."""
    return np.clip(round_away(np.asarray(x, np.float64) / scale) + zero, QMIN, QMAX).astype(np.int8)


def dequantize_real(q, scale: float, zero: int) -> np.ndarray:
    """float32 of int8 values: scale * (q - zero), computed in float64."""
    return (scale * (np.asarray(q).astype(np.float64) - zero)).astype(np.float32)


# float32 in the order of their values, as integers: the key of a float's bit pattern b is b with
# its sign bit set when b is positive, and ~b when negative (so -0.0 sits just below +0.0).
_SIGN = np.uint64(0x80000000)
_LEAST_FINITE, _MOST_FINITE = 0x00800000, 0xFF7FFFFF  # the keys of -FLT_MAX and +FLT_MAX


def _floats(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.uint64)
    bits = np.where(keys & _SIGN, keys & np.uint64(0x7FFFFFFF), ~keys & np.uint64(0xFFFFFFFF))
    return bits.astype(np.uint32).view(np.float32)


def input_thresholds(scale: float, zero: int) -> np.ndarray:
    """float32 [255]: entry i is the least finite float32 x with quantize_real(x) >= QMIN + 1 + i, so
    quantize_real(x) = QMIN + (the number of entries <= x) for every finite float32 x."""
    levels = np.arange(QMIN + 1, QMAX + 1, dtype=np.int64)
    if int(quantize_real(_floats(np.array([_MOST_FINITE])), scale, zero)[0]) < QMAX:
        raise ValueError(f"the input scale {scale!r} is too large: no float32 input reaches int8 {QMAX}")
    lo = np.full(levels.shape, _LEAST_FINITE, np.int64)  # a bisection of the float32 line for every level
    hi = np.full(levels.shape, _MOST_FINITE, np.int64)  # at once: q(hi) >= level always holds
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        reached = quantize_real(_floats(mid), scale, zero).astype(np.int64) >= levels
        hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid + 1)
    return _floats(lo)


def output_texts(scale: float, zero: int) -> list[str]:
    """The text of dequantize_real(q) for q = QMIN .. QMAX, as C's printf("%.9g", (double)value) writes
    it (the host main.c's format; Python's %-formatting of the same double gives the same digits)."""
    return ["%.9g" % float(v) for v in dequantize_real(np.arange(QMIN, QMAX + 1), scale, zero)]

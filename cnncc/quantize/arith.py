"""TFLite's integer arithmetic, in NumPy (int64 holding int32 values), written once.

The C kernels (templates/int8/model.c.j2) implement exactly these functions; the integer
reference (reference.py) calls them, and tests compare the two bit for bit.

    quantize_multiplier(m)      real m > 0 -> (M, shift): m ~= M * 2^(shift - 31), M in [2^30, 2^31)
    multiplier_value(M, shift)  the real factor M * 2^(shift - 31) that (M, shift) applies
    srdhm(a, b)                 SaturatingRoundingDoublingHighMul: (a*b + nudge) / 2^31 with C's
                                truncating division, nudge 2^30 for a*b >= 0 and 1 - 2^30 below
                                (so +1.5 -> 2 but -1.5 -> -1), INT32_MIN*INT32_MIN -> INT32_MAX
    rdbpot(x, e)                RoundingDivideByPOT: round(x / 2^e), ties away from zero
    requantize(x, M, shift)     MultiplyByQuantizedMultiplier: rdbpot(srdhm(x * 2^max(shift, 0), M),
                                max(-shift, 0))
"""
from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_SHIFT = 30  # TFLite's bound on a left shift (a multiplier of at most 2^30)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: the 32-bit fixed-point multiplier and shift of a real factor."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"a requantization factor must be finite and non-negative, got {real!r}")
    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction * 2^shift, fraction in [0.5, 1)
    fixed = math.floor(fraction * (1 << 31) + 0.5)  # std::round: exact here, ties away from zero
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > MAX_SHIFT:
        return INT32_MAX, MAX_SHIFT
    return int(fixed), int(shift)


def multiplier_value(multiplier, shift) -> float:
    """The real factor a (multiplier, shift) pair applies: M * 2^(shift - 31), exact in float64."""
    return math.ldexp(float(multiplier), int(shift) - 31)


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul on int32 values held in int64 arrays."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    product = a * b  # |a*b| <= 2^62: exact in int64
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    total = product + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C's division: truncation toward zero
    return np.where(overflow, INT32_MAX, high).astype(np.int64)


def rdbpot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero (0 <= exponent <= 31)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(x, multiplier, shift):
    """MultiplyByQuantizedMultiplier: x * M * 2^(shift - 31), rounded as TFLite rounds. A left shift
    saturates to int32 first (TFLite's product would overflow there; it never does for the
    factors quantization produces)."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    shifted = np.clip(np.asarray(x, np.int64) << left, INT32_MIN, INT32_MAX)
    return rdbpot(srdhm(shifted, multiplier), np.maximum(-shift, 0))


def rounded_divide(total, count):
    """TFLite's average-pool rounding: (total + count/2) / count for total > 0, (total - count/2) / count
    otherwise, with C's truncating division."""
    total = np.asarray(total, np.int64)
    half = count // 2
    return np.where(total > 0, (total + half) // count, -((-total + half) // count))

"""TFLite's fixed-point requantization (arith.py) written as ONNX int64 operators, for the
"fixed_point" form of the ONNX export (onnx_export.py).

    requantize(x, M, shift)   x * 2^max(shift, 0), saturated to int32        Mul, Clip
                              srdhm: (x*M + nudge) / 2^31, truncating,
                              nudge 2^30 for x*M >= 0, 1 - 2^30 below        Mul, GreaterOrEqual, Where, Add, Div
                              rdbpot: round(h / 2^e), ties away from zero,
                              as sign(h) * ((|h| + 2^e / 2) / 2^e)           Sign, Abs, Add, Div, Mul

ONNX's integer Div truncates toward zero, as C's does (and as srdhm's definition needs). The
products stay below 2^62: |x| <= 2^31 after the saturation and 0 <= M < 2^31, so srdhm's one
overflow case (INT32_MIN * INT32_MIN) cannot arise.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .arith import INT32_MAX, INT32_MIN


class FixedPoint:
    """Writes the arithmetic into a writer (onnx_export._Writer: node and constant)."""

    def __init__(self, writer):
        self.w = writer

    def offsets(self, prefix: str, tensor: str) -> str:
        """int64 (q - z) of one of cnncc's int8 tensors."""
        w = self.w
        wide = w.node("Cast", [f"{tensor}_q"], f"{prefix}_int64", to=TensorProto.INT64)
        zero = w.constant(f"{tensor}.zero_point_int64", w.values.zero_points[tensor], np.int64)
        return w.node("Sub", [wide, zero], f"{prefix}_offsets")

    def requantize(self, prefix: str, x: str, multiplier, shift) -> str:
        """int64 x * M * 2^(shift - 31) rounded as TFLite rounds; M and shift scalars or arrays
        broadcasting against x (one per channel)."""
        w = self.w
        multiplier, shift = np.asarray(multiplier, np.int64), np.asarray(shift, np.int64)
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        if left.any():
            x = w.node("Mul", [x, w.constant(f"{prefix}.left_factor", np.int64(1) << left, np.int64)],
                       f"{prefix}_left_shifted")
            x = w.node("Clip", [x, w.constant("constant.int32_min", INT32_MIN, np.int64),
                                w.constant("constant.int32_max", INT32_MAX, np.int64)],
                       f"{prefix}_saturated")
        product = w.node("Mul", [x, w.constant(f"{prefix}.multiplier", multiplier, np.int64)],
                         f"{prefix}_product64")
        positive = w.node("GreaterOrEqual", [product, w.constant("constant.int64_zero", 0, np.int64)],
                          f"{prefix}_nonnegative")
        nudge = w.node("Where", [positive, w.constant("constant.nudge_up", 1 << 30, np.int64),
                                 w.constant("constant.nudge_down", 1 - (1 << 30), np.int64)],
                       f"{prefix}_nudge")
        nudged = w.node("Add", [product, nudge], f"{prefix}_nudged")
        high = w.node("Div", [nudged, w.constant("constant.two_pow_31", 1 << 31, np.int64)],
                      f"{prefix}_high")
        if not right.any():
            return high
        divisor = np.int64(1) << right
        magnitude = w.node("Abs", [high], f"{prefix}_abs")
        magnitude = w.node("Add", [magnitude, w.constant(f"{prefix}.rounding_half", divisor >> 1, np.int64)],
                           f"{prefix}_abs_half")
        magnitude = w.node("Div", [magnitude, w.constant(f"{prefix}.divisor", divisor, np.int64)],
                           f"{prefix}_rounded_abs")
        sign = w.node("Sign", [high], f"{prefix}_sign")
        return w.node("Mul", [sign, magnitude], f"{prefix}_requantized")

    def to_int8(self, prefix: str, x: str, zero: int, bounds: tuple[int, int], output: str) -> str:
        """int8 of int64 x + the zero point, clamped to `bounds` (the op's clamp)."""
        w = self.w
        shifted = w.node("Add", [x, w.constant(f"{prefix}.output_zero_point", zero, np.int64)],
                         f"{prefix}_plus_zero")
        lo, hi = bounds
        clamped = w.node("Clip", [shifted, w.constant(f"constant.int64_{lo}".replace("-", "minus"), lo, np.int64),
                                  w.constant(f"constant.int64_{hi}", hi, np.int64)],
                         f"{prefix}_clamped")
        return w.node("Cast", [clamped], output, to=TensorProto.INT8)

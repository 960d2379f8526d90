"""upsample2d: enlarge an image by an integer factor per axis, as PyTorch's nn.Upsample.

nearest: out[c, oh, ow] = in[c, oh // s_h, ow // s_w].
bilinear (align_corners=False): output row oh reads the input at x = (oh + 0.5)/s_h - 0.5,
clamped at 0, i.e. rows floor(x) and floor(x) + 1 (the last row repeats at the border) with
weights 1 - frac(x) and frac(x); likewise along the width, and the two are multiplied.
"""
from __future__ import annotations

from fractions import Fraction

from .. import fields as F
from .base import LayerKind, ShapeError, Window, format_shape

MODES = ("nearest", "bilinear")
BILINEAR_TAPS = 4  # multiply-adds per output of the bilinear mode: a 2 x 2 neighbourhood


class Upsample2d(LayerKind):
    kind = "upsample2d"
    doc = "enlarge C x H x W by an integer factor per axis (nearest, or bilinear as PyTorch with align_corners=False)"
    fields = {
        "scale_factor": F.field(F.int_pair(), doc="output/input size per axis: s or [sh, sw]"),
        "mode": F.field(F.choice(MODES), "nearest", "nearest copies each pixel; bilinear interpolates"),
    }

    def output_shape(self, inputs):
        shape = inputs[0]
        if len(shape) != 3:
            raise ShapeError(f"expects a C x H x W image input, got {format_shape(shape)}")
        c, h, w = shape
        return (c, h * self.scale_factor[0], w * self.scale_factor[1])

    def macs(self, inputs, output):
        return output[0] * output[1] * output[2] * BILINEAR_TAPS if self.mode == "bilinear" else 0

    def window(self, inputs):
        """Nearest reads one input pixel, bilinear two along each enlarged axis; neighbouring
        outputs are 1/s input pixels apart."""
        taps = tuple(2 if self.mode == "bilinear" and s > 1 else 1 for s in self.scale_factor)
        return Window(taps, tuple(Fraction(1, s) for s in self.scale_factor))

    def explain(self, inputs, output):
        (_, h, w), (sh, sw) = inputs[0], self.scale_factor
        lines = [f"height: {h}*{sh} = {output[1]}", f"width: {w}*{sw} = {output[2]}"]
        if self.mode == "bilinear":
            lines.append("source of output o: x = (o + 0.5)/s - 0.5, clamped at 0; rows floor(x) and floor(x) + 1 "
                         "weighted 1 - frac(x) and frac(x)")
        else:
            lines.append("source of output o: o // s (a copy, no MACs)")
        lines.append("params: 0 (upsampling has no weights)")
        if self.mode == "bilinear":
            lines.append(f"MACs: {output[1]}*{output[2]}*{output[0]}*{BILINEAR_TAPS} = {self.macs(inputs, output)} "
                         "(a 2x2 neighbourhood per output)")
        return lines

    def kernel_consts(self, inputs, output):
        (c, h, w), (sh, sw) = inputs[0], self.scale_factor
        return {"C": c, "H_IN": h, "W_IN": w, "H_OUT": output[1], "W_OUT": output[2],
                "SCALE_H": sh, "SCALE_W": sw, "bilinear": self.mode == "bilinear"}

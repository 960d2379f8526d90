"""Max and average pooling (2-D and 1-D) and global average and max pooling. No parameters.

Max-pool padding never wins the max; avg-pool padding counts as zeros and the divisor is
always kh*kw (PyTorch's default). A 1-D signal is a height-1 image.
"""
from __future__ import annotations

from .. import fields as F
from .base import GLOBAL, LayerKind, ShapeError, Window, as_chw, format_shape
from .formulas import explain_output_size, output_size, resolve_padding


class _Pool2d(LayerKind):
    fields = {
        "kernel": F.field(F.int_pair(), doc="window size: k or [kh, kw]"),
        "stride": F.field(F.int_pair(), None, "step between windows (default: the kernel)"),
        "padding": F.field(F.padding(), (0, 0), "padding per side, at most half the kernel"),
    }
    rank = 3

    def __init__(self, **values):
        super().__init__(**values)
        if self.stride is None:
            self.stride = self.kernel

    def _geometry(self, shape):
        c, h, w = as_chw(shape)
        (kh, kw), (sh, sw) = self.kernel, self.stride
        pad_h = resolve_padding(self.padding, h, kh, sh, 1, 0)
        pad_w = resolve_padding(self.padding, w, kw, sw, 1, 1)
        return c, h, w, kh, kw, sh, sw, pad_h, pad_w

    def output_shape(self, inputs):
        shape = inputs[0]
        if len(shape) != self.rank:
            raise ShapeError(f"expects a {'C x H x W image' if self.rank == 3 else 'C x L signal'} input, "
                             f"got {format_shape(shape)}")
        c, h, w, kh, kw, sh, sw, pad_h, pad_w = self._geometry(shape)
        # A window made only of padding would have no input to pool (PyTorch's rule).
        if max(pad_h) > kh // 2 or max(pad_w) > kw // 2:
            raise ShapeError(f"padding {max(max(pad_h), max(pad_w))} is more than half the kernel "
                             f"{self._kernel_text(kh, kw)}", "padding")
        if kh > h + sum(pad_h) or kw > w + sum(pad_w):
            raise ShapeError(f"kernel {self._kernel_text(kh, kw)} is larger than its padded input "
                             f"{self._kernel_text(h + sum(pad_h), w + sum(pad_w))}", "kernel")
        oh, ow = output_size(h, kh, sh, *pad_h), output_size(w, kw, sw, *pad_w)
        return (c, oh, ow) if self.rank == 3 else (c, ow)

    def _kernel_text(self, h, w):
        return f"{h}x{w}" if self.rank == 3 else f"{w}"

    def window(self, inputs):
        return Window(self.kernel, self.stride)

    def explain(self, inputs, output):
        c, h, w, kh, kw, sh, sw, pad_h, pad_w = self._geometry(inputs[0])
        lines = [f"height: {explain_output_size(h, kh, sh, *pad_h)}"] if self.rank == 3 else []
        lines.append(f"{'width' if self.rank == 3 else 'length'}: {explain_output_size(w, kw, sw, *pad_w)}")
        lines.append("params: 0 (pooling has no weights)")
        return lines

    def kernel_consts(self, inputs, output):
        c, h, w, kh, kw, sh, sw, pad_h, pad_w = self._geometry(inputs[0])
        _, oh, ow = as_chw(output)
        return {"C": c, "H_IN": h, "W_IN": w, "H_OUT": oh, "W_OUT": ow, "KH": kh, "KW": kw,
                "STRIDE_H": sh, "STRIDE_W": sw, "PAD_TOP": pad_h[0], "PAD_LEFT": pad_w[0],
                "has_padding": sum(pad_h) + sum(pad_w) > 0}


class _Pool1d(_Pool2d):
    fields = {
        "kernel": F.field(F.integer(), doc="window length"),
        "stride": F.field(F.integer(), None, "step between windows (default: the kernel)"),
        "padding": F.field(F.padding(one_d=True), (0, 0), "padding per side, at most half the kernel"),
    }
    rank = 2

    def __init__(self, **values):
        super().__init__(**values)
        self.kernel = (1, self.kernel)
        self.stride = (1, self.stride[1] if isinstance(self.stride, tuple) else self.stride)


class MaxPool2d(_Pool2d):
    kind = "maxpool2d"
    doc = "maximum over each window (padding never wins)"
    gradient_at_window_max = True


class AvgPool2d(_Pool2d):
    kind = "avgpool2d"
    doc = "mean over each window (padding counts as zeros; divisor kh*kw)"


class MaxPool1d(_Pool1d):
    kind = "maxpool1d"
    doc = "maximum over each window of a signal"
    template = "maxpool2d"
    gradient_at_window_max = True


class AvgPool1d(_Pool1d):
    kind = "avgpool1d"
    doc = "mean over each window of a signal"
    template = "avgpool2d"


class _GlobalPool(LayerKind):
    """One value per channel from all its positions."""

    def output_shape(self, inputs):
        if len(inputs[0]) == 1:
            raise ShapeError("expects an image or signal input, got a flat vector")
        return (inputs[0][0],)

    def window(self, inputs):
        return GLOBAL

    def kernel_consts(self, inputs, output):
        c, h, w = as_chw(inputs[0])
        return {"C": c, "SPATIAL": h * w}


class GlobalAvgPool(_GlobalPool):
    kind = "global_avgpool"
    doc = "mean over all positions of each channel; outputs a flat [C]"


class GlobalMaxPool(_GlobalPool):
    kind = "global_maxpool"
    doc = "maximum over all positions of each channel; outputs a flat [C] (a tie's gradient goes to the first)"

    def explain(self, inputs, output):
        c, h, w = as_chw(inputs[0])
        return [f"output: {c} channels, each the maximum of its {h}*{w} = {h * w} positions",
                "params: 0 (pooling has no weights)"]

"""conv2d and conv1d: cross-correlation with stride, padding, dilation and groups.

A 1-D signal is a 2-D image of height 1, so conv1d reuses conv2d's kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import fields as F
from .base import REGISTRY, LayerKind, ParamDecl, ShapeError, Window, as_chw, format_shape
from .formulas import effective_kernel, explain_output_size, output_size, resolve_padding

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear")

_COMMON = {
    "filters": F.field(F.integer(), doc="number of filters (output channels)"),
    "groups": F.field(F.integer(), 1, "channel groups; groups == channels == filters is depthwise"),
    "bias": F.field(F.boolean(), True, "add one learned bias per filter"),
    "activation": F.field(F.choice(ACTIVATIONS), "linear", "activation applied to the output"),
}


class Conv2d(LayerKind):
    kind = "conv2d"
    doc = "2-D convolution (cross-correlation) over C x H x W inputs"
    fields = {
        "filters": _COMMON["filters"],
        "kernel": F.field(F.int_pair(), doc="kernel size: k or [kh, kw]"),
        "stride": F.field(F.int_pair(), (1, 1), "step between windows: s or [sh, sw]"),
        "padding": F.field(F.padding(), (0, 0), "zero padding per side; 'same' keeps ceil(n/s)"),
        "dilation": F.field(F.int_pair(), (1, 1), "spacing between kernel taps"),
        **{k: v for k, v in _COMMON.items() if k != "filters"},
    }
    rank = 3  # the input rank this kind accepts

    # ---- geometry shared by checking, explaining and code generation ----
    def _geometry(self, shape):
        c, h, w = as_chw(shape)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pad_h = resolve_padding(self.padding, h, kh, sh, dh, 0)
        pad_w = resolve_padding(self.padding, w, kw, sw, dw, 1)
        return c, h, w, kh, kw, sh, sw, dh, dw, pad_h, pad_w

    def _check_input(self, shape):
        if len(shape) != self.rank:
            raise ShapeError(
                f"expects a {'C x H x W image' if self.rank == 3 else 'C x L signal'} input, "
                f"got {format_shape(shape)}", hint="conv2d takes images, conv1d takes 1-D signals")

    def output_shape(self, inputs):
        shape = inputs[0]
        self._check_input(shape)
        c, h, w, kh, kw, sh, sw, dh, dw, pad_h, pad_w = self._geometry(shape)
        if c % self.groups:
            raise ShapeError(f"groups {self.groups} does not divide the {c} input channels", "groups")
        if self.filters % self.groups:
            raise ShapeError(f"groups {self.groups} does not divide filters {self.filters}", "groups")
        ekh, ekw = effective_kernel(kh, dh), effective_kernel(kw, dw)
        if ekh > h + sum(pad_h) or ekw > w + sum(pad_w):
            raise ShapeError(
                f"kernel {self._kernel_text(ekh, ekw)} is larger than its padded input "
                f"{self._extent_text(h + sum(pad_h), w + sum(pad_w))}", "kernel")
        oh = output_size(h, kh, sh, *pad_h, dh)
        ow = output_size(w, kw, sw, *pad_w, dw)
        return self._shape(self.filters, oh, ow)

    def _kernel_text(self, ekh, ekw):
        return f"{ekh}x{ekw}"

    def _extent_text(self, h, w):
        return f"{h}x{w}"

    def _shape(self, c, h, w):
        return (c, h, w)

    def param_decls(self, inputs):
        c, _, _, kh, kw, *_ = self._geometry(inputs[0])
        fan_in = (c // self.groups) * kh * kw
        fan_out = (self.filters // self.groups) * kh * kw
        init = REGISTRY[self.activation].weight_init_before
        decls = [ParamDecl("weight", self._weight_shape(c, kh, kw), True, init, fan_in, fan_out)]
        if self.bias:
            decls.append(ParamDecl("bias", (self.filters,), True, "zeros", fan_in, fan_out))
        return decls

    def _weight_shape(self, c, kh, kw):
        return (self.filters, c // self.groups, kh, kw)

    def macs(self, inputs, output):
        c, _, _, kh, kw, *_ = self._geometry(inputs[0])
        _, oh, ow = as_chw(output)
        return oh * ow * self.filters * kh * kw * c // self.groups

    def window(self, inputs):
        _, _, _, kh, kw, sh, sw, dh, dw, _, _ = self._geometry(inputs[0])
        return Window((effective_kernel(kh, dh), effective_kernel(kw, dw)), (sh, sw))

    def explain(self, inputs, output):
        c, h, w, kh, kw, sh, sw, dh, dw, pad_h, pad_w = self._geometry(inputs[0])
        _, oh, ow = as_chw(output)
        lines = []
        if self.padding == "same":
            lines.append(f"same padding: total = max((ceil(n/s) - 1)*s + k - n, 0), odd remainder bottom/right "
                         f"-> height {pad_h[0]}+{pad_h[1]}, width {pad_w[0]}+{pad_w[1]}")
        elif isinstance(self.padding, tuple) and len(self.padding) == 4:
            lines.append(f"padding per side: height {pad_h[0]} top + {pad_h[1]} bottom, "
                         f"width {pad_w[0]} left + {pad_w[1]} right")
        if self.rank == 3:
            lines.append(f"height: {explain_output_size(h, kh, sh, *pad_h, dh)}")
        lines.append(f"{'width' if self.rank == 3 else 'length'}: {explain_output_size(w, kw, sw, *pad_w, dw)}")
        per_group = f"({c}/{self.groups})" if self.groups > 1 else f"{c}"
        kernel = f"{kh}*{kw}" if self.rank == 3 else f"{kw}"
        weights = self.filters * kh * kw * c // self.groups
        bias = f" + {self.filters}" if self.bias else ""
        lines.append(f"params: {kernel}*{per_group}*{self.filters}{bias} = {weights + (self.filters if self.bias else 0)}")
        spatial = f"{oh}*{ow}" if self.rank == 3 else f"{ow}"
        lines.append(f"MACs: {spatial}*{self.filters}*{kernel}*{per_group} = {self.macs(inputs, output)}")
        return lines

    def geometry(self, input_shape) -> "ConvGeometry":
        """The numbers a conv's kernels are planned from (cnncc/backends/*/conv2d.py)."""
        c, h, w, kh, kw, sh, sw, dh, dw, pad_h, pad_w = self._geometry(input_shape)
        oh = output_size(h, kh, sh, *pad_h, dh)
        ow = output_size(w, kw, sw, *pad_w, dw)
        return ConvGeometry(c, h, w, self.filters, oh, ow, kh, kw, sh, sw, dh, dw, pad_h, pad_w,
                            self.groups, self.bias)


@dataclass(frozen=True)
class ConvGeometry:
    """A conv (a conv1d as height 1) as the notes define it: input C_IN x H_IN x W_IN, output
    C_OUT x H_OUT x W_OUT, kernel, stride, dilation, the padding of each side, groups, bias."""
    c_in: int
    h_in: int
    w_in: int
    c_out: int
    h_out: int
    w_out: int
    kh: int
    kw: int
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    pad_h: tuple[int, int]  # top, bottom
    pad_w: tuple[int, int]  # left, right
    groups: int
    bias: bool


class Conv1d(Conv2d):
    kind = "conv1d"
    doc = "1-D convolution (cross-correlation) over C x L signals"
    fields = {
        "filters": _COMMON["filters"],
        "kernel": F.field(F.integer(), doc="kernel length"),
        "stride": F.field(F.integer(), 1, "step between windows"),
        "padding": F.field(F.padding(one_d=True), (0, 0), "zero padding per side: int | same | valid"),
        "dilation": F.field(F.integer(), 1, "spacing between kernel taps"),
        **{k: v for k, v in _COMMON.items() if k != "filters"},
    }
    rank = 2

    def __init__(self, **values):
        super().__init__(**values)
        # Store 1-D settings as the (height 1, width n) 2-D case the kernels implement.
        self.kernel = (1, self.kernel)
        self.stride = (1, self.stride)
        self.dilation = (1, self.dilation)

    def _kernel_text(self, ekh, ekw):
        return f"{ekw}"

    def _extent_text(self, h, w):
        return f"{w}"

    def _shape(self, c, h, w):
        return (c, w)

    def _weight_shape(self, c, kh, kw):
        return (self.filters, c // self.groups, kw)

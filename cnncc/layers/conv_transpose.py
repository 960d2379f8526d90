"""conv_transpose2d: the transpose (adjoint) of conv2d, as PyTorch's ConvTranspose2d.

Each input pixel scatters weight[ic, oc, :, :] times its value onto the output, the taps
placed stride apart: out[oc, ih*s - p + kh*d, iw*s - p + kw*d] += in[ic, ih, iw] *
weight[ic, oc - g*C_OUT_PER_GROUP, kh, kw] for the input channels ic of oc's group g. The
weight layout is PyTorch's (c_in, filters/groups, kh, kw); `padding` crops p rows and columns
off each side of the full result and `output_padding` adds rows and columns at the bottom and
right, so the output size is (n - 1)*s - 2p + d*(k - 1) + output_padding + 1.
"""
from __future__ import annotations

from fractions import Fraction

from .. import fields as F
from .base import REGISTRY, LayerKind, ParamDecl, ShapeError, Window, as_chw, format_shape
from .conv import ACTIVATIONS
from .formulas import effective_kernel, explain_transposed_output_size, transposed_output_size


class ConvTranspose2d(LayerKind):
    kind = "conv_transpose2d"
    doc = "2-D transposed convolution (PyTorch's ConvTranspose2d): upsamples C x H x W by the stride"
    fields = {
        "filters": F.field(F.integer(), doc="number of filters (output channels)"),
        "kernel": F.field(F.int_pair(), doc="kernel size: k or [kh, kw]"),
        "stride": F.field(F.int_pair(), (1, 1), "spacing of the input pixels on the output: s or [sh, sw]"),
        "padding": F.field(F.int_pair(0), (0, 0), "rows/columns cropped off each side of the output"),
        "output_padding": F.field(F.int_pair(0), (0, 0),
                                  "rows/columns added at the bottom/right; below the stride or the dilation"),
        "dilation": F.field(F.int_pair(), (1, 1), "spacing between kernel taps"),
        "groups": F.field(F.integer(), 1, "channel groups; each maps its c_in/groups inputs to filters/groups"),
        "bias": F.field(F.boolean(), True, "add one learned bias per filter"),
        "activation": F.field(F.choice(ACTIVATIONS), "linear", "activation applied to the output"),
    }

    def _geometry(self, shape):
        c, h, w = as_chw(shape)
        return c, h, w, self.kernel, self.stride, self.padding, self.dilation, self.output_padding

    def output_shape(self, inputs):
        shape = inputs[0]
        if len(shape) != 3:
            raise ShapeError(f"expects a C x H x W image input, got {format_shape(shape)}")
        c, h, w, kernel, stride, padding, dilation, output_padding = self._geometry(shape)
        if c % self.groups:
            raise ShapeError(f"groups {self.groups} does not divide the {c} input channels", "groups")
        if self.filters % self.groups:
            raise ShapeError(f"groups {self.groups} does not divide filters {self.filters}", "groups")
        for axis, name in enumerate(("height", "width")):
            # PyTorch's rule: the sizes that a conv with the same settings maps back to n are the
            # formula's plus 0 .. s-1, so output_padding picks one of them (or, with dilation, a
            # size below the dilation's reach).
            if output_padding[axis] >= max(stride[axis], dilation[axis]):
                raise ShapeError(f"output_padding {output_padding[axis]} along the {name} must be smaller than "
                                 f"the stride {stride[axis]} or the dilation {dilation[axis]}", "output_padding")
        size = self._output_hw(h, w)
        if min(size) < 1:
            axis = 0 if size[0] < 1 else 1
            raise ShapeError(f"padding {padding[axis]} crops the whole {('height', 'width')[axis]}: "
                             f"{explain_transposed_output_size(*self._axis((h, w)[axis], axis))}", "padding")
        return (self.filters,) + size

    def _axis(self, n, axis):
        """The arguments of the size formulas along one axis."""
        return (n, self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis],
                self.output_padding[axis])

    def _output_hw(self, h, w):
        return transposed_output_size(*self._axis(h, 0)), transposed_output_size(*self._axis(w, 1))

    def param_decls(self, inputs):
        c, _, _, (kh, kw), (sh, sw), *_ = self._geometry(inputs[0])
        # Each output pixel sums about (c/groups) * kh*kw / (sh*sw) products (the taps land
        # stride apart); each input pixel feeds (filters/groups) * kh*kw outputs.
        fan_in = max(1, (c // self.groups) * kh * kw // (sh * sw))
        fan_out = (self.filters // self.groups) * kh * kw
        init = REGISTRY[self.activation].weight_init_before
        decls = [ParamDecl("weight", (c, self.filters // self.groups, kh, kw), True, init, fan_in, fan_out)]
        if self.bias:
            decls.append(ParamDecl("bias", (self.filters,), True, "zeros", fan_in, fan_out))
        return decls

    def macs(self, inputs, output):
        """Every input pixel times every tap of its group's filters (taps landing in the cropped
        padding included: the kernel computes them)."""
        c, h, w, (kh, kw), *_ = self._geometry(inputs[0])
        return h * w * c * kh * kw * (self.filters // self.groups)

    def window(self, inputs):
        """Along each axis an output pixel reads the input pixels within its kernel span, stride
        apart: ceil(span/s) of them; neighbouring outputs are 1/s input pixels apart."""
        _, _, _, kernel, stride, _, dilation, _ = self._geometry(inputs[0])
        spans = [effective_kernel(k, d) for k, d in zip(kernel, dilation)]
        return Window(tuple(-(-span // s) for span, s in zip(spans, stride)),
                      tuple(Fraction(1, s) for s in stride))

    def explain(self, inputs, output):
        c, h, w, (kh, kw), *_ = self._geometry(inputs[0])
        per_group = f"({self.filters}/{self.groups})" if self.groups > 1 else f"{self.filters}"
        weights = c * (self.filters // self.groups) * kh * kw
        bias = f" + {self.filters}" if self.bias else ""
        return [f"height: {explain_transposed_output_size(*self._axis(h, 0))}",
                f"width: {explain_transposed_output_size(*self._axis(w, 1))}",
                f"params: {c}*{per_group}*{kh}*{kw}{bias} = {weights + (self.filters if self.bias else 0)}",
                f"MACs: {h}*{w}*{c}*{kh}*{kw}*{per_group} = {self.macs(inputs, output)} "
                "(every input pixel times every tap)"]

    def kernel_consts(self, inputs, output):
        c, h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw), _ = self._geometry(inputs[0])
        _, oh, ow = output
        cog = self.filters // self.groups
        return {"C_IN": c, "H_IN": h, "W_IN": w, "C_OUT": self.filters, "H_OUT": oh, "W_OUT": ow,
                "KH": kh, "KW": kw, "STRIDE_H": sh, "STRIDE_W": sw, "DIL_H": dh, "DIL_W": dw,
                "PAD_TOP": ph, "PAD_LEFT": pw, "GROUPS": self.groups,
                "C_IN_PER_GROUP": c // self.groups, "C_OUT_PER_GROUP": cog,
                # the scattered columns: one row per output tap (oc, kh, kw), one column per input pixel
                "K_GROUP": cog * kh * kw, "PIXELS_IN": h * w, "PIXELS_OUT": oh * ow,
                "has_bias": self.bias}

    def workspace(self, inputs, output):
        """One sample's and group's columns [K_GROUP, PIXELS_IN] (conv_transpose2d.c.j2)."""
        c, h, w, (kh, kw), *_ = self._geometry(inputs[0])
        return (self.filters // self.groups) * kh * kw * h * w

    def forward_scratch(self, inputs, output):
        return self.workspace(inputs, output)

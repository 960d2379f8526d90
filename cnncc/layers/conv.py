"""conv2d and conv1d: cross-correlation with stride, padding, dilation and groups.

A 1-D signal is a 2-D image of height 1, so conv1d reuses conv2d's kernels.
"""
from __future__ import annotations

from .. import fields as F
from .base import LayerKind, ParamDecl, ShapeError, Window, as_chw, format_shape
from .formulas import effective_kernel, explain_output_size, output_size, resolve_padding

DOTS_BELOW_FILTERS = 16  # filters per group below which weight gradients are dot products (conv2d.c.j2)
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
        init = "he" if self.activation in ("relu", "leaky_relu") else "xavier"
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

    def kernel_consts(self, inputs, output):
        c, h, w, kh, kw, sh, sw, dh, dw, pad_h, pad_w = self._geometry(inputs[0])
        _, oh, ow = as_chw(output)
        consts = {
            "C_IN": c, "H_IN": h, "W_IN": w, "C_OUT": self.filters, "H_OUT": oh, "W_OUT": ow,
            "KH": kh, "KW": kw, "STRIDE_H": sh, "STRIDE_W": sw, "DIL_H": dh, "DIL_W": dw,
            "PAD_TOP": pad_h[0], "PAD_LEFT": pad_w[0], "GROUPS": self.groups,
            "C_IN_PER_GROUP": c // self.groups, "C_OUT_PER_GROUP": self.filters // self.groups,
            "K_GROUP": c // self.groups * kh * kw, "PIXELS_OUT": oh * ow,
            "has_bias": self.bias, "shifted": (sh, sw) == (1, 1),
            # The weight gradient's product has C_OUT_PER_GROUP columns: too few to fill vectors,
            # so it is computed as dot products along the pixels instead.
            "dweight_by_dots": self.filters // self.groups < DOTS_BELOW_FILTERS,
            "SAMPLE_SLOTS": 1,  # ir.lower sets the compile-time thread count (with_sample_slots)
        }
        plan = self._shifted_plan(consts, pad_h, pad_w) if consts["shifted"] else {}
        consts.update(plan)
        consts.update(self._scratch_layout(consts))
        return consts

    @classmethod
    def pooled_backward_consts(cls, consts, pool):
        """The constants of the backward through a maxpool (ir.PooledBackward), from this conv's
        constants and the pool's (maxpool2d's kernel_consts); None where it does not apply.

        That backward visits each pool window's maximum: one patch of the input per window and
        filter, read channels-last so that a kernel row of all the channels, KW * C_IN values,
        is contiguous. So it needs one group and no dilation along the width."""
        if consts["GROUPS"] != 1 or consts["DIL_W"] != 1:
            return None
        k = cls._without_layout(consts)
        k.update({"POOL_PIXELS": pool["H_OUT"] * pool["W_OUT"], "pooled": True,
                  # the input, zero-padded, channels-last: HWC_H x HWC_W x C_IN
                  "HWC_H": max(consts["H_IN"] + consts["PAD_TOP"], (consts["H_OUT"] - 1) * consts["STRIDE_H"]
                               + (consts["KH"] - 1) * consts["DIL_H"] + 1),
                  "HWC_W": max(consts["W_IN"] + consts["PAD_LEFT"], (consts["W_OUT"] - 1) * consts["STRIDE_W"]
                               + consts["KW"]),
                  "TAP_ROW": consts["KW"] * consts["C_IN"],
                  # rows padded to whole vectors (of up to 16 lanes): the weights' padding lanes are zero
                  "ROW_PAD": -(-consts["KW"] * consts["C_IN"] // 16) * 16})
        k.update(cls._scratch_layout(k))
        return k

    @staticmethod
    def _shifted_plan(k, pad_h, pad_w):
        """A stride-1 conv reads its patch matrix in place (see conv2d.c.j2): the input, zero-padded
        into H_PAD x W_PAD planes, shifted by each tap. The input gradient is the same kind of conv
        of the output gradient, padded into H_DPAD x W_DPAD planes, with the flipped kernel."""
        h_pad, w_pad = k["H_IN"] + sum(pad_h), k["W_IN"] + sum(pad_w)
        h_dpad, w_dpad = k["H_IN"] + (k["KH"] - 1) * k["DIL_H"], k["W_IN"] + (k["KW"] - 1) * k["DIL_W"]
        dpad_top, dpad_left = (k["KH"] - 1) * k["DIL_H"] - pad_h[0], (k["KW"] - 1) * k["DIL_W"] - pad_w[0]
        return {
            "H_PAD": h_pad, "W_PAD": w_pad, "WIDE_OUT": (k["H_OUT"] - 1) * w_pad + k["W_OUT"],
            "H_DPAD": h_dpad, "W_DPAD": w_dpad, "DPAD_TOP": dpad_top, "DPAD_LEFT": dpad_left,
            "WIDE_IN": (k["H_IN"] - 1) * w_dpad + k["W_IN"],
            "padded": sum(pad_h) + sum(pad_w) > 0, "wide": k["KW"] > 1,
            "dout_is_dpad": (dpad_top, dpad_left, h_dpad, w_dpad) == (0, 0, k["H_OUT"], k["W_OUT"]),
        }

    @staticmethod
    def _scratch_layout(k):
        """Offsets of the kernels' scratch buffers in the op's workspace. Samples go round
        SAMPLE_SLOTS slots (an OpenMP build runs them on its threads), each with the scratch of one
        sample: SLOT_SIZE elements at slot * SLOT_SIZE, the forward's first (an inference build, one
        slot, needs only those: SCRATCH_FORWARD elements). What the samples share follows the slots."""
        cig, cog = k["C_IN_PER_GROUP"], k["C_OUT_PER_GROUP"]
        if k["shifted"]:
            forward = {"SCRATCH_PADDED": cig * k["H_PAD"] * k["W_PAD"] if k["padded"] else 0,
                       "SCRATCH_WIDE": cog * k["WIDE_OUT"] if k["wide"] else 0}
            backward = {"SCRATCH_DOUT": k["WIDE_OUT"] * cog,
                        "SCRATCH_DPAD": 0 if k["dout_is_dpad"] else cog * k["H_DPAD"] * k["W_DPAD"],
                        "SCRATCH_WIDE_IN": cig * k["WIDE_IN"] if k["wide"] else 0}
            shared = {"SCRATCH_FLIPPED": k["C_OUT"] * k["K_GROUP"]}
        else:
            forward = {"SCRATCH_PATCHES": k["K_GROUP"] * k["PIXELS_OUT"]}
            backward = {"SCRATCH_DOUT": 0 if k["dweight_by_dots"] else k["PIXELS_OUT"] * cog}
            shared = {}
        shared["SCRATCH_DWEIGHT_T"] = 0 if k["dweight_by_dots"] else k["C_OUT"] * k["K_GROUP"]
        if k.get("pooled"):  # pooled_backward_consts: a backward of its own, channels-last
            # a whole-vector read of the last kernel row runs up to ROW_PAD - TAP_ROW past the image
            image = k["HWC_H"] * k["HWC_W"] * k["C_IN"] + k["ROW_PAD"] - k["TAP_ROW"]
            rows = k["C_OUT"] * k["KH"] * k["ROW_PAD"]
            backward = {"SCRATCH_IN_HWC": image, "SCRATCH_DIN_HWC": image,
                        "SCRATCH_DWEIGHT_PART": rows, "SCRATCH_DBIAS_PART": k["C_OUT"]}
            shared = {"SCRATCH_WEIGHT_HWC": rows, "SCRATCH_DWEIGHT_SUM": rows}
        layout, offset = {}, 0
        for name, size in forward.items():
            layout[name], offset = offset, offset + size
        layout["SCRATCH_FORWARD"] = offset
        for name, size in backward.items():
            layout[name], offset = offset, offset + size
        layout["SLOT_SIZE"] = offset
        offset *= k.get("SAMPLE_SLOTS", 1)
        for name, size in shared.items():
            layout[name], offset = offset, offset + size
        layout["SCRATCH_SIZE"] = offset
        return layout

    @staticmethod
    def _without_layout(consts):
        """The constants without their scratch layout (_scratch_layout computes it anew)."""
        return {key: value for key, value in consts.items() if not key.startswith("SCRATCH_") and key != "SLOT_SIZE"}

    @classmethod
    def with_sample_slots(cls, consts, slots):
        """The constants for `slots` sample slots (see _scratch_layout) instead of one."""
        k = cls._without_layout(consts)
        k["SAMPLE_SLOTS"] = slots
        k.update(cls._scratch_layout(k))
        return k

    def forward_scratch(self, inputs, output):
        return self.kernel_consts(inputs, output)["SCRATCH_FORWARD"]

    def workspace(self, inputs, output):
        """Scratch of one kernel call, reused by every sample (see _scratch_layout)."""
        return self.kernel_consts(inputs, output)["SCRATCH_SIZE"]


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

"""batchnorm: per-channel normalisation with learned scale and shift.

Training uses the batch's mean and (biased) variance and updates running averages with
the spec's momentum (unbiased variance, as PyTorch); inference uses the running averages.
"""
from __future__ import annotations

from .. import fields as F
from .base import LayerKind, ParamDecl, as_chw


class BatchNorm(LayerKind):
    kind = "batchnorm"
    normalises_its_input = True
    doc = "batch normalisation per channel (per feature on flat inputs)"
    fields = {
        "momentum": F.field(F.number(0.0, 1.0), 0.1, "weight of the new batch in the running averages"),
        "eps": F.field(F.number(0.0, 1.0, lo_open=True), 1e-5, "added to the variance"),
    }

    def output_shape(self, inputs):
        return inputs[0]

    def param_decls(self, inputs):
        c = inputs[0][0]
        return [ParamDecl("gamma", (c,), True, "ones"), ParamDecl("beta", (c,), True, "zeros"),
                ParamDecl("running_mean", (c,), False, "zeros"), ParamDecl("running_var", (c,), False, "ones")]

    def explain(self, inputs, output):
        c = inputs[0][0]
        return [f"params: 2*{c} trainable (gamma, beta) + 2*{c} running statistics = {4 * c}"]

    def kernel_consts(self, inputs, output):
        c, h, w = as_chw(inputs[0])
        return {"C": c, "SPATIAL": h * w, "momentum": self.momentum, "eps": self.eps}

    def workspace(self, inputs, output):
        return 2 * inputs[0][0]  # the batch mean and 1/sqrt(var + eps), kept for backward

"""batchnorm: per-channel normalisation with learned scale and shift.

Training uses the batch's mean and (biased) variance and updates running averages with
the spec's momentum (unbiased variance, as PyTorch); inference uses the running averages, as a
per-channel scale and shift: computed by the forward from the parameters (the Python module, a
build reading its weights at run time), or at emit time from compiled-in weights (`fold`).
"""
from __future__ import annotations

import numpy as np

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

    training_only_roles = ("scratch",)  # the statistics kept for backward
    folded_params = ("gamma", "beta", "running_mean", "running_var")

    @classmethod
    def fold(cls, settings, params):
        """scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale, with the
        roundings of the forward of the Python module (batchnorm.c.j2): eps rounded to the dtype,
        1/sqrt in float64 rounded once, the rest in the dtype. So the folded build computes
        exactly what Model.predict does."""
        dtype = params["gamma"].dtype
        eps = float(dtype.type(settings["eps"]))
        with np.errstate(all="ignore"):  # a non-positive variance gives a non-finite scale, refused by emit
            inv_std = (1.0 / np.sqrt(params["running_var"].astype(np.float64) + eps)).astype(dtype)
        scale = params["gamma"] * inv_std
        return {"scale": scale, "shift": params["beta"] - params["running_mean"] * scale}

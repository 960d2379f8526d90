"""Adam with L2 weight decay added to the gradient (PyTorch's Adam, not AdamW)."""
from __future__ import annotations

from .. import fields as F
from .base import OptimizerKind


class Adam(OptimizerKind):
    kind = "adam"
    doc = "Adam (PyTorch's rule, weight decay added to the gradient)"
    fields = {
        "lr": F.field(F.number(0.0, 10.0, lo_open=True), 0.001, "learning rate"),
        "beta1": F.field(F.number(0.0, 1.0, hi_open=True), 0.9, "decay of the first moment"),
        "beta2": F.field(F.number(0.0, 1.0, hi_open=True), 0.999, "decay of the second moment"),
        "eps": F.field(F.number(0.0, 1.0, lo_open=True), 1e-8, "added to the root of the second moment"),
        "weight_decay": F.field(F.number(0.0, 1.0), 0.0, "L2 penalty added to the gradient"),
    }

    def state_slots(self, settings):
        return 2  # first and second moments

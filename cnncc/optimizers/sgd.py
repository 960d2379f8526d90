"""SGD with optional (Nesterov) momentum and L2 weight decay, PyTorch's rule."""
from __future__ import annotations

from .. import fields as F
from .base import OptimizerKind


class SGD(OptimizerKind):
    kind = "sgd"
    doc = "stochastic gradient descent (PyTorch's rule)"
    fields = {
        "lr": F.field(F.number(0.0, 10.0, lo_open=True), 0.01, "learning rate"),
        "momentum": F.field(F.number(0.0, 1.0, hi_open=True), 0.0, "momentum factor (0: plain SGD)"),
        "nesterov": F.field(F.boolean(), False, "Nesterov momentum (needs momentum > 0)"),
        "weight_decay": F.field(F.number(0.0, 1.0), 0.0, "L2 penalty added to the gradient"),
    }

    def rule_errors(self, values):
        if values.get("nesterov") and not values.get("momentum"):
            return [("nesterov", "nesterov needs momentum > 0")]
        return []

    def state_slots(self, settings):
        return 1 if settings.get("momentum", 0) > 0 else 0  # the velocity

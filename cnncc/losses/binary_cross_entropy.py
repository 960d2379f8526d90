"""binary_cross_entropy: sigmoid outputs against targets in [0, 1], computed from the logits."""
from __future__ import annotations

import numpy as np

from ..errors import Diagnostic
from ..layers import REGISTRY
from .base import LossKind


class BinaryCrossEntropy(LossKind):
    kind = "binary_cross_entropy"
    doc = "mean binary cross-entropy of sigmoid outputs against targets in [0, 1]"
    aliases = ("binary_crossentropy", "bce", "bcewithlogitsloss", "bceloss")
    metric = "accuracy"

    def check_output(self, last, activation, computed_by, loc):
        label = last.spec.label
        if not (activation and REGISTRY[activation].is_logistic):
            return [Diagnostic(f"binary_cross_entropy takes sigmoid outputs, but {label} has no sigmoid", loc,
                               field="loss", hint="add activation: sigmoid to the last layer")]
        if not last.layer.activation_kind and computed_by(last.spec.inputs[0]) is None:
            return [Diagnostic(f"binary_cross_entropy is computed from the logits before the sigmoid, but "
                               f"{label} applies its sigmoid to the network input", loc, field="loss",
                               hint="add a layer with parameters before the sigmoid, e.g. {type: dense, units: N}")]
        return []

    def logits(self, output, ops):
        # Fused with the sigmoid before it: the loss reads logits, stable for any magnitude.
        sigmoid = next(op for op in reversed(ops) if op.output.name == output.name)
        return sigmoid.inputs[0], sigmoid.name

    def validate_targets(self, y, n, output_shape, classes, dtype):
        y = super().validate_targets(y, n, output_shape, classes, dtype)
        if y.min() < 0 or y.max() > 1:
            raise ValueError("binary_cross_entropy targets must be in [0, 1]")
        return y

    def random_targets(self, rng, n, output_shape, classes):
        return rng.uniform(size=(n,) + tuple(output_shape))

    def hits(self, outputs, targets):
        """Samples whose every sigmoid output is on the right side of 0.5."""
        return int(((outputs > 0.5) == (targets > 0.5)).all(axis=tuple(range(1, outputs.ndim))).sum())

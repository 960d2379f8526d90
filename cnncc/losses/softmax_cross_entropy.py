"""softmax_cross_entropy: the softmax of the logits against integer class labels."""
from __future__ import annotations

import numpy as np

from ..errors import Diagnostic
from ..layers import REGISTRY, format_shape
from .base import LossKind


class SoftmaxCrossEntropy(LossKind):
    kind = "softmax_cross_entropy"
    doc = "softmax of the logits, then the mean negative log-likelihood of integer class labels"
    aliases = ("cross_entropy", "crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
               "categorical_cross_entropy", "sparse_categorical_cross_entropy", "nll", "nll_loss",
               "crossentropyloss", "ce", "softmax")
    alias_hint = "it applies the softmax itself and takes integer class labels"
    takes_labels = True
    metric = "accuracy"

    def check_output(self, last, activation, computed_by, loc):
        out = last.output_shape
        if len(out) != 1 or out[0] < 2:
            return [Diagnostic(f"softmax_cross_entropy needs a flat output of at least 2 classes, but "
                               f"{last.spec.label} outputs {format_shape(out)}", loc, field="loss",
                               hint="end with {type: dense, units: CLASSES}")]
        if activation and REGISTRY[activation].outputs_probabilities:
            where = last.spec.field_locs.get("activation") or last.spec.loc
            return [Diagnostic("softmax_cross_entropy applies the softmax itself; the last layer must output "
                               "logits, not softmax probabilities", where, last.spec.label, "activation",
                               "remove the softmax from the last layer")]
        return []

    def validate_targets(self, y, n, output_shape, classes, dtype):
        if y.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), one per sample, got {tuple(y.shape)}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)][0]
            raise ValueError(f"labels must be in [0, {classes}), got {bad}")
        return np.ascontiguousarray(y, dtype=np.int32)

    def random_targets(self, rng, n, output_shape, classes):
        return rng.integers(0, classes, n).astype(np.int32)

    def hits(self, outputs, targets):
        return int((outputs.argmax(axis=1) == targets).sum())

"""Layers that move or combine data without weights: flatten, dropout, add, concat."""
from __future__ import annotations

from .. import fields as F
from .base import LayerKind, ShapeError, as_chw, format_shape, numel


class Flatten(LayerKind):
    kind = "flatten"
    doc = "C x H x W -> flat [C*H*W] (row-major, like the notes' reshape); flat stays flat"
    template = None  # the same memory, seen as a vector

    def output_shape(self, inputs):
        return (numel(inputs[0]),)

    def explain(self, inputs, output):
        return [f"size: {' * '.join(str(d) for d in inputs[0])} = {output[0]}"]


class Dropout(LayerKind):
    kind = "dropout"
    doc = "inverted dropout: in training, zero each unit with probability rate and scale the rest by 1/(1-rate)"
    fields = {"rate": F.field(F.number(0.0, 1.0, hi_open=True), 0.5, "probability of dropping a unit")}

    def output_shape(self, inputs):
        return inputs[0]

    def kernel_consts(self, inputs, output):
        return {"SIZE": numel(inputs[0]), "rate": self.rate, "scale": 1.0 / (1.0 - self.rate)}


class Add(LayerKind):
    kind = "add"
    doc = "element-wise sum of inputs of the same shape"
    min_inputs, max_inputs = 2, 16
    sums_its_inputs = True

    def output_shape(self, inputs):
        for shape in inputs[1:]:
            if shape != inputs[0]:
                listed = ", ".join(format_shape(s) for s in inputs)
                raise ShapeError(f"inputs must all have the same shape, got {listed}", "inputs")
        return inputs[0]

    def kernel_consts(self, inputs, output):
        return {"SIZE": numel(output)}


class Concat(LayerKind):
    kind = "concat"
    doc = "join inputs along channels; spatial sizes must match"
    min_inputs, max_inputs = 2, 16

    def output_shape(self, inputs):
        spatial = {shape[1:] for shape in inputs}
        ranks = {len(shape) for shape in inputs}
        if len(spatial) != 1 or len(ranks) != 1:
            listed = ", ".join(format_shape(s) for s in inputs)
            raise ShapeError(f"inputs must have the same spatial size to join along channels, got {listed}",
                             "inputs")
        return (sum(shape[0] for shape in inputs),) + inputs[0][1:]

    def kernel_consts(self, inputs, output):
        _, h, w = as_chw(output)
        channels = [shape[0] for shape in inputs]
        offsets = [sum(channels[:k]) for k in range(len(channels))]
        return {"SPATIAL": h * w, "C_OUT": output[0], "channels": channels, "offsets": offsets}

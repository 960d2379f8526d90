"""Activations, as layers or as the `activation:` field of conv2d/conv1d/dense.

The element-wise ones share one template; each class gives its forward expression of x
and its derivative as an expression of the input x and output y (C source fragments
written here, in Python, never taken from the spec).
"""
from __future__ import annotations

import re

from .. import fields as F
from .base import LayerKind, numel, as_chw


class _Elementwise(LayerKind):
    template = "activation"
    is_activation = True
    forward_expr: str
    backward_expr: str  # dL/dx given x, y and dy

    def output_shape(self, inputs):
        return inputs[0]

    def kernel_consts(self, inputs, output):
        return {"SIZE": numel(output), "forward_expr": self.forward_expr, "backward_expr": self.backward_expr,
                "backward_reads_x": re.search(r"\bx\b", self.backward_expr) is not None,
                "backward_reads_y": re.search(r"\by\b", self.backward_expr) is not None}


class Relu(_Elementwise):
    kind = "relu"
    doc = "max(0, x)"
    gradient_where_positive = True
    weight_init_before = "he"
    forward_expr = "x > 0 ? x : 0"
    backward_expr = "x > 0 ? dy : 0"


class LeakyRelu(_Elementwise):
    kind = "leaky_relu"
    doc = "x if x > 0 else alpha*x"
    weight_init_before = "he"
    fields = {"alpha": F.field(F.number(0.0, 1.0), 0.01, "slope for x < 0")}

    def kernel_consts(self, inputs, output):
        return {**super().kernel_consts(inputs, output), "alpha": self.alpha}

    forward_expr = "x > 0 ? x : ALPHA * x"
    backward_expr = "x > 0 ? dy : ALPHA * dy"


class Sigmoid(_Elementwise):
    kind = "sigmoid"
    doc = "1 / (1 + exp(-x))"
    is_logistic = True
    # REAL_EXP: exp, or expf in a float32 inference build (templates/model.c.j2); the cast says
    # where a double result rounds to real
    forward_expr = "(real)(1 / (1 + REAL_EXP(-x)))"
    backward_expr = "dy * y * (1 - y)"


class Tanh(_Elementwise):
    kind = "tanh"
    doc = "tanh(x)"
    forward_expr = "(real)REAL_TANH(x)"
    backward_expr = "dy * (1 - y * y)"


class Linear(LayerKind):
    kind = "linear"
    doc = "identity"
    template = None

    def output_shape(self, inputs):
        return inputs[0]


class Softmax(LayerKind):
    kind = "softmax"
    is_activation = True
    outputs_probabilities = True
    doc = "exp(x_i) / sum_j exp(x_j) over channels (numerically stable)"

    def output_shape(self, inputs):
        return inputs[0]

    def kernel_consts(self, inputs, output):
        c, h, w = as_chw(output)
        return {"C": c, "SPATIAL": h * w}

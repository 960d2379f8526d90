"""dense: a fully connected layer, y = W x + b, on a flat input."""
from __future__ import annotations

from .. import fields as F
from .base import GLOBAL, REGISTRY, LayerKind, ParamDecl, ShapeError, explain_params, format_shape
from .conv import ACTIVATIONS


class Dense(LayerKind):
    kind = "dense"
    doc = "fully connected layer on a flat input"
    fields = {
        "units": F.field(F.integer(), doc="number of outputs"),
        "bias": F.field(F.boolean(), True, "add one learned bias per unit"),
        "activation": F.field(F.choice(ACTIVATIONS), "linear", "activation applied to the output"),
    }

    def output_shape(self, inputs):
        if len(inputs[0]) != 1:
            raise ShapeError(f"needs a flat input, got {format_shape(inputs[0])}",
                             hint="add {type: flatten} before this layer")
        return (self.units,)

    def param_decls(self, inputs):
        n_in = inputs[0][0]
        init = REGISTRY[self.activation].weight_init_before
        decls = [ParamDecl("weight", (self.units, n_in), True, init, n_in, self.units)]
        if self.bias:
            decls.append(ParamDecl("bias", (self.units,), True, "zeros", n_in, self.units))
        return decls

    def macs(self, inputs, output):
        return inputs[0][0] * self.units

    def window(self, inputs):
        return GLOBAL

    def explain(self, inputs, output):
        return [explain_params(self.param_decls(inputs)),
                f"MACs: {inputs[0][0]}*{self.units} = {self.macs(inputs, output)}"]

    def kernel_consts(self, inputs, output):
        return {"IN": inputs[0][0], "OUT": self.units, "has_bias": self.bias}

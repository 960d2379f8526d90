"""Spec -> CheckedNet: every layer's inputs resolved, shapes inferred, parameters counted.

All problems are collected and reported together, each at the spec location of the
field that causes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

from .errors import Diagnostic, SpecError, did_you_mean
from .losses import loss_kind
from .layers import GLOBAL, REGISTRY, ParamDecl, Shape, ShapeError, Window, format_shape, numel
from .spec import LayerSpec, Spec

MAX_TENSOR_ELEMENTS = (1 << 31) - 1  # per sample: index arithmetic in C stays far from overflow
MAX_PARAMS = (1 << 31) - 1
# Any one axis of an output (input axes are at most 2^20 already): an axis plus its padding (at
# most 2^20 a side) and a kernel's extent within it then stay far inside a C int.
MAX_AXIS = 1 << 30


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[int, int]  # input pixels one unit sees along (h, w), before clipping
    # input pixels between neighbouring units: a Fraction after an upsampling layer, whose
    # Window strides are 1/s (its neighbouring units are closer than one input pixel)
    jump: tuple[int | Fraction, int | Fraction]

    def grow(self, step: Window | str | None, image: tuple[int, int]) -> "ReceptiveField":
        if step is None:
            return self
        if step == GLOBAL:
            return ReceptiveField(image, image)
        (kh, kw), (sh, sw) = step.kernel, step.stride
        # A fractional span still covers whole pixels: round it up.
        return ReceptiveField((math.ceil(self.size[0] + (kh - 1) * self.jump[0]),
                               math.ceil(self.size[1] + (kw - 1) * self.jump[1])),
                              (self.jump[0] * sh, self.jump[1] * sw))

    @staticmethod
    def union(fields: list["ReceptiveField"]) -> "ReceptiveField":
        return ReceptiveField((max(f.size[0] for f in fields), max(f.size[1] for f in fields)),
                              (max(f.jump[0] for f in fields), max(f.jump[1] for f in fields)))


@dataclass(frozen=True)
class CheckedLayer:
    spec: LayerSpec
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    params: tuple[ParamDecl, ...]
    macs: int
    receptive_field: ReceptiveField

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layer(self):
        return self.spec.layer

    @property
    def param_count(self) -> int:
        return sum(p.size for p in self.params)

    @property
    def trainable_count(self) -> int:
        return sum(p.size for p in self.params if p.trainable)


@dataclass(frozen=True)
class CheckedNet:
    spec: Spec
    layers: tuple[CheckedLayer, ...]

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape

    @property
    def input_shape(self) -> Shape:
        return self.spec.input_shape

    @property
    def dead_layers(self) -> tuple[CheckedLayer, ...]:
        """The layers the output does not depend on (a dead branch): computed, then thrown away.
        An exporter keeps them; an importer, like any graph optimiser, drops them."""
        live, stack = set(), [self.layers[-1].name]
        inputs = {layer.name: layer.spec.inputs for layer in self.layers}
        while stack:
            name = stack.pop()
            if name not in live:
                live.add(name)
                stack.extend(inputs.get(name, ()))
        return tuple(layer for layer in self.layers if layer.name not in live)


def check_net(spec: Spec) -> CheckedNet:
    diagnostics: list[Diagnostic] = []
    shapes: dict[str, Shape] = {"input": spec.input_shape}
    fields: dict[str, ReceptiveField] = {"input": ReceptiveField((1, 1), (1, 1))}
    image = image_extent(spec.input_shape)
    order = {layer.name: layer.index for layer in spec.layers}
    checked: list[CheckedLayer] = []
    failed: set[str] = set()
    if numel(spec.input_shape) > MAX_TENSOR_ELEMENTS:  # the first layer's kernels index it too
        raise SpecError([Diagnostic(f"input {format_shape(spec.input_shape)} has {numel(spec.input_shape):,} "
                                    f"elements per sample; the limit is {MAX_TENSOR_ELEMENTS:,}",
                                    spec.locs.get("input"), field="input")], spec.path)

    for layer_spec in spec.layers:
        def report(message, field=None, hint=None):
            loc = layer_spec.field_locs.get(field) if field else None
            diagnostics.append(Diagnostic(message, loc or layer_spec.loc, layer_spec.label, field, hint))

        cls = REGISTRY[layer_spec.kind]
        inputs = layer_spec.inputs
        if not cls.min_inputs <= len(inputs) <= cls.max_inputs:
            count = (f"exactly {cls.min_inputs}" if cls.min_inputs == cls.max_inputs
                     else f"{cls.min_inputs} to {cls.max_inputs}")
            report(f"takes {count} input{'s' if cls.max_inputs > 1 else ''}, got {len(inputs)}", "inputs",
                   "list them as inputs: [a, b]" if cls.min_inputs > 1 else None)
            failed.add(layer_spec.name)
            continue
        bad = False
        for name in inputs:
            if name == layer_spec.name:
                report(f"inputs names the layer itself ('{name}')", "inputs")
                bad = True
            elif name in order and order[name] > layer_spec.index:
                report(f"inputs names '{name}', which comes later (layer {order[name]}); "
                       "a layer may only use the input or earlier layers", "inputs")
                bad = True
            elif name not in shapes and name not in failed:
                hint = did_you_mean(name, [*shapes, *failed]) or "use 'input' or the name of an earlier layer"
                report(f"inputs names unknown layer '{name}'", "inputs", hint)
                bad = True
            elif name in failed:
                bad = True  # already reported at that layer
        if bad:
            failed.add(layer_spec.name)
            continue
        in_shapes = [shapes[name] for name in inputs]
        layer = layer_spec.layer
        try:
            out_shape = layer.output_shape(in_shapes)
            params = tuple(layer.param_decls(in_shapes))
            if not layer_spec.trainable:  # a frozen layer: every parameter of it, as a running statistic is
                params = tuple(replace(p, trainable=False) for p in params)
        except ShapeError as exc:
            report(exc.message, exc.field, exc.hint)
            failed.add(layer_spec.name)
            continue
        if min(out_shape) < 1:
            report(f"output size would be {format_shape(out_shape)}: a size below 1", "kernel")
            failed.add(layer_spec.name)
            continue
        if numel(out_shape) > MAX_TENSOR_ELEMENTS:
            report(f"output {format_shape(out_shape)} has {numel(out_shape):,} elements per sample; "
                   f"the limit is {MAX_TENSOR_ELEMENTS:,}")
            failed.add(layer_spec.name)
            continue
        if max(out_shape) > MAX_AXIS:
            report(f"output {format_shape(out_shape)} has an axis of {max(out_shape):,}; the limit is "
                   f"{MAX_AXIS:,} per axis", hint="padding grows an axis at every layer")
            failed.add(layer_spec.name)
            continue
        field = ReceptiveField.union([fields[name] for name in inputs]).grow(layer.window(in_shapes), image)
        shapes[layer_spec.name] = out_shape
        fields[layer_spec.name] = field
        checked.append(CheckedLayer(layer_spec, tuple(in_shapes), out_shape, params,
                                    layer.macs(in_shapes, out_shape), field))

    if not diagnostics:
        total = sum(layer.param_count for layer in checked)
        if total > MAX_PARAMS:
            largest = max(checked, key=lambda layer: layer.param_count)
            diagnostics.append(Diagnostic(f"the network has {total:,} parameters; the limit is {MAX_PARAMS:,}",
                                          largest.spec.loc, hint=f"the largest layer, {largest.spec.label}, "
                                                                 f"has {largest.param_count:,}"))
        diagnostics.extend(_check_loss(spec, checked))
    if diagnostics:
        raise SpecError(diagnostics, spec.path)
    return CheckedNet(spec, tuple(checked))


def image_extent(shape: Shape) -> tuple[int, int]:
    """The (height, width) a receptive field is measured in: 1 x L for signals, 1 x 1 for flat."""
    if len(shape) == 3:
        return (shape[1], shape[2])
    if len(shape) == 2:
        return (1, shape[1])
    return (1, 1)


def _check_loss(spec: Spec, checked: list[CheckedLayer]) -> list[Diagnostic]:
    """Does the loss fit what the last layer outputs?"""
    if spec.loss is None:
        return []
    last = checked[-1]
    activation = last.layer.final_activation
    loc = spec.locs.get("loss")
    label = last.spec.label
    rules = loss_kind(spec.loss)
    out = last.output_shape
    if spec.training["targets"] == "input" and (rules.takes_labels or out != spec.input_shape):
        return [Diagnostic(f"training targets: input needs an output shaped like the input "
                           f"({format_shape(spec.input_shape)}) and a loss with real-valued targets (mse or "
                           f"binary_cross_entropy), but {label} outputs {format_shape(out)} into {spec.loss}",
                           spec.locs.get("training"), field="training",
                           hint="an autoencoder ends with a layer that restores the input's shape")]
    found = rules.check_output(last, activation, lambda name: _computed_by(checked, name), loc)
    if found:
        return found
    # The loss reads a computed tensor (for binary_cross_entropy, the logits before the sigmoid),
    # never the network input itself: such a network has nothing to train.
    if _computed_by(checked, last.name) is None:
        return [Diagnostic(f"{spec.loss} needs a network that computes something, but {label} outputs the "
                           "network input unchanged", loc, field="loss",
                           hint="add a layer with parameters, e.g. {type: dense, units: N}")]
    return []


def _computed_by(checked: list[CheckedLayer], name: str) -> str | None:
    """The layer whose kernel computes the tensor `name` (following views such as flatten and
    linear back to their input), or None when it is the network input itself."""
    layers = {layer.name: layer for layer in checked}
    while name != "input":
        layer = layers[name]
        if REGISTRY[layer.spec.kind].template is not None or layer.layer.activation_kind:
            return name
        name = layer.spec.inputs[0]
    return None

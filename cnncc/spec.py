"""A spec (path, YAML text or dict) -> a validated, located `Spec`.

Every field of every section and layer is validated here against its declared schema,
and every problem is collected, so one run reports them all. Shapes are the checker's
business (check.py); this stage only knows what each field may hold.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import fields as F
from .augment import AUGMENT_FIELDS, Augment
from .errors import Diagnostic, FieldError, Loc, SpecError, SpecFileError, closest, did_you_mean
from .layers import REGISTRY, LayerKind
from .losses import LOSSES, loss_named_elsewhere
from .optimizers import OPTIMIZERS
from .source import MAX_SPEC_BYTES, Map, Node, Scalar, Seq, SourceError, from_python, parse_text

RESERVED_NAMES = ("input",)

TRAINING_FIELDS = {
    "batch_size": F.field(F.integer(1, 1 << 16), 32, "samples per training step"),
    "epochs": F.field(F.integer(1, 1 << 16), 1, "passes over the training data"),
    "schedule": F.field(F.choice(("constant", "step", "cosine")), "constant", "learning-rate schedule"),
    "step_size": F.field(F.integer(1, 1 << 16), 1, "step schedule: epochs between decays"),
    "gamma": F.field(F.number(0.0, 1.0, lo_open=True), 0.1, "step schedule: decay factor"),
    "targets": F.field(F.choice(("data", "input")), "data",
                       "what the loss compares the output with: the data's labels or targets, or the input "
                       "itself (an autoencoder)"),
}

INPUT_FIELDS = {
    "channels": F.field(F.integer(), doc="input channels (1 grey, 3 RGB)"),
    "height": F.field(F.integer(), None, "image height (images only)"),
    "width": F.field(F.integer(), None, "image width (images only)"),
    "length": F.field(F.integer(), None, "signal length (1-D signals only)"),
}

TOP_FIELDS = ("name", "input", "dtype", "layers", "loss", "optimizer", "training")
LAYER_COMMON = ("type", "name", "inputs", "trainable")
# `trainable: false` freezes a layer for fine-tuning: its parameters get no update, no gradient
# is kept for them and nothing before the first trainable layer runs backward (ir.py).
TRAINABLE_FIELD = F.field(F.boolean(), True, "false: freeze the layer's parameters (fine-tuning)")


@dataclass(frozen=True)
class LayerSpec:
    index: int  # 1-based position in `layers`
    name: str
    kind: str
    layer: LayerKind
    inputs: tuple[str, ...]
    loc: Loc | None = None
    field_locs: dict[str, Loc | None] = field(default_factory=dict)
    trainable: bool = True  # False: frozen (TRAINABLE_FIELD)

    @property
    def label(self) -> str:
        return f"layer {self.index} '{self.name}' ({self.kind})"


@dataclass(frozen=True)
class OptimizerSpec:
    type: str
    lr: float
    settings: dict[str, Any]  # every other field of the type, defaults filled in


@dataclass(frozen=True)
class Spec:
    name: str
    input_shape: tuple[int, ...]
    dtype: str
    layers: tuple[LayerSpec, ...]
    loss: str | None
    optimizer: OptimizerSpec
    training: dict[str, Any]
    path: str = "<spec>"
    locs: dict[str, Loc | None] = field(default_factory=dict)  # where each top-level value is

    def layer(self, name: str) -> LayerSpec:
        return next(layer for layer in self.layers if layer.name == name)

    def fingerprint(self, name: str | None = None) -> str:
        """A hash of what gives weights their meaning (not the optimizer or training settings).
        With `name`, the fingerprint this spec would have under that name: a weights file saved
        before a rename still matches when only the name changed."""
        content = {
            "name": self.name if name is None else name, "input": self.input_shape, "dtype": self.dtype, "loss": self.loss,
            "layers": [[l.name, l.kind, list(l.inputs), repr(sorted(l.layer.values().items()))]
                       for l in self.layers],
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class _Collector:
    def __init__(self):
        self.diagnostics: list[Diagnostic] = []

    def error(self, message, loc=None, layer=None, field=None, hint=None):
        self.diagnostics.append(Diagnostic(message, loc, layer, field, hint))

    def fields(self, node: Map, schema: dict[str, F.Field], where: str | None, skip=()) -> dict[str, Any]:
        """Validate a mapping against a schema; unknown keys, missing and bad values all reported."""
        values = {}
        meant = set()  # fields a misspelt key names: that error covers their absence too
        for key, value_node in node.items.items():
            if key in skip:
                continue
            if key not in schema:
                allowed = [k for k in schema if k not in skip] + [k for k in skip]
                meant.add(closest(key, allowed))
                hint = did_you_mean(key, allowed) or f"allowed keys: {', '.join(allowed)}"
                self.error(f"unknown key {key!r}", node.key_locs.get(key), where, key, hint)
                continue
            try:
                values[key] = schema[key].parse(value_node.plain())
            except FieldError as exc:
                self.error(f"{key} {exc.message}", _error_loc(value_node, exc), where, key, exc.hint)
        for key, spec_field in schema.items():
            if key not in node.items and key not in values:
                if spec_field.required and key not in meant:
                    self.error(f"missing required field '{key}' ({spec_field.describe})", node.loc, where, key)
                else:
                    values[key] = spec_field.default
        return values


def _error_loc(node: Node, exc: FieldError) -> Loc | None:
    """Where a value's error is: at the list item it names, else at the value."""
    if exc.item is not None and isinstance(node, Seq) and exc.item < len(node.items):
        return node.items[exc.item].loc or node.loc
    return node.loc


def _read(source) -> tuple[Node, str]:
    """Parse any accepted source to located nodes; return them and a display path."""
    if isinstance(source, dict):
        return from_python(source), "<dict>"
    if isinstance(source, os.PathLike) or (
            isinstance(source, str) and "\n" not in source and (
            source.endswith((".yaml", ".yml")) or os.path.isfile(source))):
        path = str(source)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_SPEC_BYTES + 1)  # one more byte: enough to tell it is too big
        except OSError as exc:
            raise SpecFileError([Diagnostic(f"cannot read spec: {exc.strerror}")], path) from None
        except ValueError:  # a NUL byte or an unencodable character in the path itself
            raise SpecError([Diagnostic("cannot read spec: the path contains a NUL byte or an "
                                        "unencodable character")], repr(path)) from None
        return parse_text(data), path
    if isinstance(source, (str, bytes)):
        return parse_text(source), "<string>"
    raise TypeError(f"load_spec takes a path, YAML text, a dict or a Spec, not {type(source).__name__}")


def load_spec(source) -> Spec:
    """Load and validate a spec from a path, YAML text, a dict, or pass a Spec through."""
    if isinstance(source, Spec):
        return source
    path = "<spec>"
    try:
        root, path = _read(source)
    except SourceError as exc:
        raise SpecError([exc.diagnostic], path if path != "<spec>" else _display(source)) from None
    out = _Collector()
    if not isinstance(root, Map):
        out.error("a spec must be a mapping with 'name', 'input' and 'layers'", root.loc)
        raise SpecError(out.diagnostics, path)
    meant = set()  # fields a misspelt key names: that error covers their absence too
    for key in root.items:
        if key not in TOP_FIELDS:
            meant.add(closest(key, TOP_FIELDS))
            out.error(f"unknown top-level key {key!r}", root.key_locs.get(key), field=key,
                      hint=did_you_mean(key, TOP_FIELDS) or f"allowed keys: {', '.join(TOP_FIELDS)}")
    for key in ("name", "input", "layers"):
        if key not in root.items and key not in meant:
            out.error(f"missing required top-level field '{key}'", root.loc, field=key)

    name = _one(out, root, "name", F.field(F.identifier()))
    dtype = _one(out, root, "dtype", F.field(F.choice(("float32", "float64")), "float32"))
    loss = _one(out, root, "loss", F.field(_loss_choice(), None))
    input_shape = _input(out, root.items.get("input"))
    optimizer = _optimizer(out, root.items.get("optimizer"), dtype or "float32")
    training = _training(out, root.items.get("training"), input_shape)
    layers = _layers(out, root.items.get("layers"))
    if out.diagnostics:  # in the order of the file, as a compiler reports them
        raise SpecError(sorted(out.diagnostics, key=lambda d: (d.loc.line, d.loc.col) if d.loc else (0, 0)), path)
    return Spec(name, input_shape, dtype, tuple(layers), loss, optimizer, training, path,
                {key: node.loc for key, node in root.items.items()})


def _loss_choice():
    """The loss names, with a hint from the names Keras and PyTorch use to the one here."""
    parse_choice, describe = F.choice(tuple(LOSSES))

    def parse(value):
        try:
            return parse_choice(value)
        except FieldError as exc:
            meant = loss_named_elsewhere(value) if isinstance(value, str) else None
            if meant is None:
                raise
            hint = f"use {meant.kind}" + (f" ({meant.alias_hint})" if meant.alias_hint else "")
            raise FieldError(exc.message, hint) from None

    return parse, describe


def _display(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) and len(str(source)) < 200 \
        and "\n" not in str(source) and Path(str(source)).suffix in (".yaml", ".yml") else "<string>"


def _one(out: _Collector, root: Map, key: str, spec_field: F.Field):
    if key not in root.items:
        return spec_field.default if not spec_field.required else None
    node = root.items[key]
    try:
        return spec_field.parse(node.plain())
    except FieldError as exc:
        out.error(f"{key} {exc.message}", node.loc, field=key, hint=exc.hint)


def _section(out: _Collector, node: Node | None, schema, what: str, skip=()) -> dict[str, Any]:
    if node is None:
        return {key: f.default for key, f in schema.items()}
    if not isinstance(node, Map):
        out.error(f"'{what}' must be a mapping", node.loc, field=what)
        return {key: f.default for key, f in schema.items()}
    return out.fields(node, schema, f"{what}", skip)


def _training(out: _Collector, node: Node | None, input_shape) -> dict[str, Any]:
    """The training section; its `augment` mapping (None when absent) is a section of its own."""
    values = _section(out, node, TRAINING_FIELDS, "training", skip=("augment",))
    values["augment"] = None
    augment_node = node.items.get("augment") if isinstance(node, Map) else None
    if augment_node is None:
        return values
    errors = len(out.diagnostics)
    settings = _section(out, augment_node, AUGMENT_FIELDS, "training.augment")
    if len(out.diagnostics) == errors and input_shape:
        problem = Augment(**settings).shape_problem(input_shape)
        if problem:
            key, message = problem
            out.error(message, augment_node.items[key].loc, "training.augment", key)
    values["augment"] = settings
    return values


def _input(out: _Collector, node: Node | None) -> tuple[int, ...]:
    """(C, H, W) for an image, (C, L) for a signal; () when already reported as invalid."""
    if node is None:
        return ()
    if not isinstance(node, Map):
        out.error("'input' must be a mapping like {channels: 3, height: 32, width: 32}", node.loc, field="input")
        return ()
    values = out.fields(node, INPUT_FIELDS, "input")
    if any(key in node.items and key not in values for key in INPUT_FIELDS):
        return ()  # a bad value, already reported
    c, h, w, length = (values.get(key) for key in ("channels", "height", "width", "length"))
    if c is None:
        return ()
    if length is not None:
        if h is not None or w is not None:
            out.error("give either height and width (an image) or length (a signal), not both", node.loc, "input")
            return ()
        return (c, length)
    if h is None or w is None:
        out.error("needs height and width (an image) or length (a 1-D signal)", node.loc, "input")
        return ()
    return (c, h, w)


def _optimizer(out: _Collector, node: Node | None, dtype: str) -> OptimizerSpec:
    default_rules = next(iter(OPTIMIZERS.values()))()  # the first registered: sgd
    default = OptimizerSpec(default_rules.kind, default_rules.fields["lr"].default,
                            {k: v for k, v in default_rules.defaults().items() if k != "lr"})
    if node is None:
        return default
    if not isinstance(node, Map):
        out.error("'optimizer' must be a mapping like {type: adam, lr: 0.001}", node.loc, field="optimizer")
        return default
    type_node = node.items.get("type")
    kind = type_node.plain() if type_node is not None else None
    if not isinstance(kind, str) or kind not in OPTIMIZERS:
        out.error(f"optimizer type must be one of {' | '.join(OPTIMIZERS)}, got {kind!r}",
                  type_node.loc if type_node else node.loc, "optimizer", "type",
                  did_you_mean(kind, OPTIMIZERS) if isinstance(kind, str) else None)
        return default
    rules = OPTIMIZERS[kind]()
    values = out.fields(node, rules.fields, "optimizer", skip=("type",))
    for key, message in rules.rule_errors(values):
        out.error(message, node.items.get(key, node).loc, "optimizer", key)
    for key, value in values.items():
        problem = _lost_in_dtype(value, dtype) if key in node.items else None
        if problem:
            out.error(f"{key} {value!r} {problem}", node.items[key].loc, "optimizer", key,
                      "the C code computes the update in the model's dtype: pick a value it can hold, "
                      "or use dtype: float64")
    lr = values.pop("lr", rules.fields["lr"].default)
    return OptimizerSpec(kind, lr, values)


def _lost_in_dtype(value, dtype: str) -> str | None:
    """Why a hyper-parameter does not survive conversion to the model's dtype, or None. A nonzero
    value below the smallest normal number vanishes (Adam's eps 1e-50 is 0 in float32, and 0/0 is
    NaN); a decay below 1 that rounds to 1 stops the moment from ever changing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
        return None
    info = np.finfo(dtype)
    converted = float(np.dtype(dtype).type(value))
    if abs(converted) < info.tiny:
        return f"is {'0' if converted == 0 else 'subnormal'} in {dtype} (its smallest normal value is {info.tiny:.3g})"
    if value < 1 <= converted:
        return f"rounds to 1 in {dtype} (the largest value below 1 is {1 - info.epsneg:.10g})"
    return None


def _layers(out: _Collector, node: Node | None) -> list[LayerSpec]:
    if node is None:
        return []
    if not isinstance(node, Seq) or not node.items:
        out.error("'layers' must be a non-empty list of layers", node.loc, field="layers")
        return []
    parsed = []  # (index, node, kind, values, explicit name)
    for index, layer_node in enumerate(node.items, start=1):
        where = f"layer {index}"
        if not isinstance(layer_node, Map):
            out.error("each layer must be a mapping like {type: conv2d, filters: 8, kernel: 3}",
                      layer_node.loc, where)
            continue
        type_node = layer_node.items.get("type")
        kind = type_node.plain() if type_node is not None else None
        if type_node is None:
            out.error("missing required field 'type'", layer_node.loc, where, "type",
                      f"one of: {', '.join(REGISTRY)}")
            continue
        if not isinstance(kind, str) or kind not in REGISTRY:
            hint = did_you_mean(kind, REGISTRY) if isinstance(kind, str) else None
            out.error(f"unknown layer type {kind!r}", type_node.loc, where, "type",
                      hint or f"one of: {', '.join(REGISTRY)}")
            continue
        cls = REGISTRY[kind]
        name = None
        if "name" in layer_node.items:
            try:
                name = F.identifier()[0](layer_node.items["name"].plain())
            except FieldError as exc:
                out.error(f"name {exc.message}", layer_node.items["name"].loc, f"{where} ({kind})", "name",
                          exc.hint)
        where = f"layer {index} '{name}' ({kind})" if name else f"layer {index} ({kind})"
        values = out.fields(layer_node, cls.fields, where, skip=LAYER_COMMON)
        inputs = None
        if "inputs" in layer_node.items:
            try:
                inputs = F.name_list()[0](layer_node.items["inputs"].plain())
            except FieldError as exc:
                out.error(f"inputs {exc.message}", _error_loc(layer_node.items["inputs"], exc), where, "inputs", exc.hint)
        trainable = TRAINABLE_FIELD.default
        if "trainable" in layer_node.items:
            try:
                trainable = TRAINABLE_FIELD.parse(layer_node.items["trainable"].plain())
            except FieldError as exc:
                out.error(f"trainable {exc.message}", layer_node.items["trainable"].loc, where, "trainable", exc.hint)
        parsed.append((index, layer_node, kind, values, name, (inputs, trainable)))

    taken = {}
    for index, layer_node, kind, _, name, _ in parsed:
        if name is None:
            continue
        where = f"layer {index} '{name}' ({kind})"
        if name in RESERVED_NAMES:
            out.error(f"the name '{name}' is reserved for the network input", layer_node.items["name"].loc,
                      where, "name")
        elif name.lower() in taken:
            first, first_name = taken[name.lower()]
            out.error(f"duplicate layer name '{name}' (layer {first} is named '{first_name}')",
                      layer_node.items["name"].loc, where, "name",
                      "names become C symbols, so they must differ in more than letter case")
        else:
            taken[name.lower()] = (index, name)

    layers, counters, previous = [], {}, "input"
    for index, layer_node, kind, values, name, (inputs, trainable) in parsed:
        if name is None:
            while True:
                counters[kind] = counters.get(kind, 0) + 1
                name = f"{kind}_{counters[kind]}"
                if name.lower() not in taken:
                    break
            taken[name.lower()] = (index, name)
        field_locs = {key: n.loc for key, n in layer_node.items.items()}
        if len(values) == len(REGISTRY[kind].fields):
            layer = REGISTRY[kind](**values)
            layers.append(LayerSpec(index, name, kind, layer, inputs or (previous,), layer_node.loc, field_locs,
                                    trainable))
        previous = name
    return layers

"""The shape report: per-layer shapes, parameters, MACs and receptive fields, and the
totals a student or an engineer checks by hand: parameters, forward and backward MACs and
the memory a training run at a given batch will allocate (taken from the IR's buffer
plan, the same numbers the runtime allocates).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .check import CheckedNet, image_extent
from .ir import Program
from .layers import format_shape
from .memplan import deployment_figures
from .spec import Spec


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    inputs: tuple[str, ...]
    output_shape: tuple[int, ...]
    params: int
    trainable_params: int
    macs: int
    backward_macs: int
    receptive_field: tuple[int, int]
    explain: tuple[str, ...]


def byte_size(n: int) -> str:
    """Bytes exactly, and in KB/MB/GB (powers of 1000) when that is shorter to read."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def shape_label(shape) -> str:
    """What format_shape's form means, for a table header: the notes' H x W x C (arrays are C x H x W)."""
    return {3: "HxWxC", 2: "LxC"}.get(len(shape), "features")


@dataclass(frozen=True)
class Report:
    net: CheckedNet
    program: Program
    batch: int
    rows: tuple[LayerRow, ...]
    totals: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def spec(self) -> Spec:
        return self.net.spec

    def to_dict(self) -> dict:
        return {
            "name": self.spec.name,
            "input": {"shape": list(self.spec.input_shape)},
            "layers": [{"name": r.name, "type": r.type, "inputs": list(r.inputs),
                        "output_shape": list(r.output_shape), "params": r.params,
                        "trainable_params": r.trainable_params, "macs": r.macs} for r in self.rows],
            "totals": dict(self.totals),
            "warnings": list(self.warnings),
        }

    def to_json(self, explain: bool = False) -> str:
        out = self.to_dict()
        if explain:
            for layer, row in zip(out["layers"], self.rows):
                layer["explain"] = list(row.explain)
        return json.dumps(out, indent=2)

    def _input_text(self) -> str:
        shape = self.spec.input_shape
        return (f"input {format_shape(shape)} ({shape_label(shape)}; arrays and JSON are "
                f"{'C x H x W' if len(shape) == 3 else 'C x L'} = [{', '.join(map(str, shape))}])")

    def to_text(self, explain: bool = False) -> str:
        spec = self.spec
        header = ["#", "layer", "type", f"output ({shape_label(spec.input_shape)})", "params", "MACs", "RF"]
        body = [["", "input", "", format_shape(spec.input_shape), "", "", ""]]
        notes = {}
        for i, r in enumerate(self.rows, 1):
            body.append([str(i), r.name, r.type, format_shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}",
                         _rf_text(r.receptive_field, spec.input_shape)])
            notes[len(body) - 1] = r.explain
        widths = [max(len(row[c]) for row in [header] + body) for c in range(len(header))]
        right = {0, 4, 5}

        def fmt(row):
            return "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(fmt(header))
        lines = [f"{spec.name}: {self._input_text()}, {spec.dtype}", rule, fmt(header), rule]
        for index, row in enumerate(body):
            lines.append(fmt(row))
            if explain:
                lines.extend(f"        {line}" for line in notes.get(index, ()))
        t = self.totals
        memory = self.program.buffer_elements(self.batch, training=True)
        size = self.program.itemsize
        parts = " + ".join(f"{name.replace('_', ' ')} {n * size:,}" for name, n in memory.items() if n)
        lines += [rule,
                  f"params: {t['params']:,} (trainable {t['trainable_params']:,}, "
                  f"non-trainable {t['non_trainable_params']:,})",
                  f"forward MACs: {t['macs']:,} per sample",
                  f"backward MACs: {t['backward_macs']:,} per sample (weight gradients, and input gradients "
                  "except for the network input)",
                  f"activation memory: {byte_size(t['activation_bytes'])} per sample",
                  f"parameter memory: {byte_size(t['param_bytes'])}",
                  f"training memory at batch {self.batch} ({self.spec.optimizer.type}): "
                  f"{byte_size(t['training_bytes'])} = {parts}",
                  _deployment_text(t)]
        lines += [f"warning: {warning}" for warning in self.warnings]
        if explain:
            lines.append(f"training memory: the bytes of each buffer the generated code allocates, "
                         f"{size} bytes per {spec.dtype} element")
        return "\n".join(lines)

    def to_markdown(self, explain: bool = False) -> str:
        spec = self.spec
        lines = [f"### {spec.name}", "", f"{self._input_text().capitalize()}, {spec.dtype}.", "",
                 f"| # | layer | type | output ({shape_label(spec.input_shape)}) | params | MACs | RF |",
                 "|---:|---|---|---|---:|---:|---|"]
        for i, r in enumerate(self.rows, 1):
            lines.append(f"| {i} | {r.name} | {r.type} | {format_shape(r.output_shape)} | {r.params:,} | "
                         f"{r.macs:,} | {_rf_text(r.receptive_field, spec.input_shape)} |")
        t = self.totals
        lines += ["", f"- params: {t['params']:,} (trainable {t['trainable_params']:,}, "
                      f"non-trainable {t['non_trainable_params']:,})",
                  f"- forward MACs: {t['macs']:,}; backward MACs: {t['backward_macs']:,}",
                  f"- activation memory: {byte_size(t['activation_bytes'])} per sample; "
                  f"parameter memory: {byte_size(t['param_bytes'])}",
                  f"- training memory at batch {self.batch}: {byte_size(t['training_bytes'])}",
                  f"- {_deployment_text(t)}"]
        lines += [f"- **warning**: {warning}" for warning in self.warnings]
        if explain:
            lines += ["", "#### Formulas", ""]
            for i, r in enumerate(self.rows, 1):
                lines += [f"{i}. `{r.name}` ({r.type})", *[f"    - `{line}`" for line in r.explain]]
        return "\n".join(lines)


def _deployment_text(t: dict) -> str:
    saving = 1 - t["arena_bytes"] / t["arena_bytes_unshared"] if t["arena_bytes_unshared"] else 0.0
    return (f"deployment (cnncc emit --inference-only, batch {t['arena_batch']}): weights {t['weight_bytes']:,} "
            f"bytes (flash), arena {t['arena_bytes']:,} bytes (RAM) against {t['arena_bytes_unshared']:,} "
            f"with one buffer per tensor ({saving:.0%} saved; {_short_size(t['weight_bytes'])} of weights, "
            f"{_short_size(t['arena_bytes'])} of arena)")


def _short_size(n: int) -> str:
    return byte_size(n).split("(")[-1].rstrip(")") if n >= 1000 else f"{n} bytes"


def _rf_text(rf: tuple[int, int], input_shape) -> str:
    return f"{rf[1]}" if len(input_shape) == 2 else f"{rf[0]}x{rf[1]}"


def build_report(net: CheckedNet, program: Program, batch: int | None = None,
                 deployed: Program | None = None) -> Report:
    """deployed: the program `cnncc emit` writes (pipeline.emit_options), whose memory the
    deployment figures are; None: `program` itself."""
    deploy_batch = batch or 1  # an explicit --batch applies to both; inference defaults to 1, as emit does
    batch = batch or net.spec.training["batch_size"]
    image = image_extent(net.input_shape)
    main_op = {}
    for op in program.ops:
        main_op.setdefault(op.layer, op)
    rows = []
    for layer in net.layers:
        op = main_op.get(layer.name)
        needs_dx = op is not None and any(op.input_grads)
        backward = layer.macs * (2 if needs_dx else 1) if layer.macs else 0
        rf = (min(layer.receptive_field.size[0], image[0]), min(layer.receptive_field.size[1], image[1]))
        rows.append(LayerRow(layer.name, layer.spec.kind, layer.spec.inputs, layer.output_shape,
                             layer.param_count, layer.trainable_count, layer.macs, backward, rf,
                             tuple(layer.layer.explain(list(layer.input_shapes), layer.output_shape))))
    params = sum(r.params for r in rows)
    trainable = sum(r.trainable_params for r in rows)
    totals = {
        "params": params, "trainable_params": trainable, "non_trainable_params": params - trainable,
        "macs": sum(r.macs for r in rows), "backward_macs": sum(r.backward_macs for r in rows),
        "activation_bytes": program.activation_size * program.itemsize,
        "param_bytes": program.num_params * program.itemsize,
        "training_bytes": program.buffer_bytes(batch, training=True), "batch": batch,
        **deployment_figures(deployed or program, deploy_batch),
    }
    return Report(net, program, batch, tuple(rows), totals, _dead_branches(net))


def _dead_branches(net: CheckedNet) -> tuple[str, ...]:
    """Layers the output does not depend on: computed, counted, then discarded. The one that feeds
    nothing at all heads its warning; the layers only it reads are named with it."""
    dead = net.dead_layers
    read = {name for layer in net.layers for name in layer.spec.inputs}
    warnings = []
    for layer in dead:
        if layer.name in read:
            continue
        feeding = _feeding(layer, dead)
        also = f" (so do {', '.join(repr(name) for name in feeding)}, which only it reads)" if feeding else ""
        warnings.append(f"layer '{layer.name}' ({layer.spec.kind}) feeds nothing: its output is computed and thrown "
                        f"away (a dead branch){also}; connect it with `inputs:` or remove it")
    return tuple(warnings)


def _feeding(head, dead) -> list[str]:
    """The dead layers whose outputs reach `head` (the rest of its dead branch), in spec order."""
    inputs = {layer.name: layer.spec.inputs for layer in dead}
    branch, stack = set(), list(inputs[head.name])
    while stack:
        name = stack.pop()
        if name in inputs and name not in branch:
            branch.add(name)
            stack.extend(inputs[name])
    return [layer.name for layer in dead if layer.name in branch]


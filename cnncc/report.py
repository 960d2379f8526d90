"""The shape report: per-layer shapes, parameters, MACs and receptive fields, and the
totals a student or an engineer checks by hand: parameters, forward and backward MACs and
the memory a training run at a given batch will allocate (taken from the IR's buffer
plan, the same numbers the runtime allocates).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .check import CheckedNet, check_net, image_extent
from .ir import Program, lower
from .layers import format_shape
from .memplan import deployment_figures
from .source import without_gc_pauses
from .spec import Spec, load_spec


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


@dataclass(frozen=True)
class Report:
    net: CheckedNet
    program: Program
    batch: int
    rows: tuple[LayerRow, ...]
    totals: dict = field(default_factory=dict)

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
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self, explain: bool = False) -> str:
        spec = self.spec
        header = ["#", "layer", "type", "output (HxWxC)", "params", "MACs", "RF"]
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
        lines = [f"{spec.name}: input {format_shape(spec.input_shape)}, {spec.dtype}", rule, fmt(header), rule]
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
                  f"activation memory: {t['activation_bytes']:,} bytes per sample",
                  f"parameter memory: {t['param_bytes']:,} bytes",
                  f"training memory at batch {self.batch} ({self.spec.optimizer.type}): "
                  f"{t['training_bytes']:,} bytes = {parts}",
                  _deployment_text(t)]
        if explain:
            lines.append(f"training memory: the bytes of each buffer the generated code allocates, "
                         f"{size} bytes per {spec.dtype} element")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        spec = self.spec
        lines = [f"### {spec.name}", "", f"Input {format_shape(spec.input_shape)} ({spec.dtype}).", "",
                 "| # | layer | type | output (HxWxC) | params | MACs | RF |",
                 "|---:|---|---|---|---:|---:|---|"]
        for i, r in enumerate(self.rows, 1):
            lines.append(f"| {i} | {r.name} | {r.type} | {format_shape(r.output_shape)} | {r.params:,} | "
                         f"{r.macs:,} | {_rf_text(r.receptive_field, spec.input_shape)} |")
        t = self.totals
        lines += ["", f"- params: {t['params']:,} (trainable {t['trainable_params']:,}, "
                      f"non-trainable {t['non_trainable_params']:,})",
                  f"- forward MACs: {t['macs']:,}; backward MACs: {t['backward_macs']:,}",
                  f"- activation memory: {t['activation_bytes']:,} bytes per sample; "
                  f"parameter memory: {t['param_bytes']:,} bytes",
                  f"- training memory at batch {self.batch}: {t['training_bytes']:,} bytes",
                  f"- {_deployment_text(t)}"]
        return "\n".join(lines)


def _deployment_text(t: dict) -> str:
    saving = 1 - t["arena_bytes"] / t["arena_bytes_unshared"] if t["arena_bytes_unshared"] else 0.0
    return (f"deployment (cnncc emit --inference-only, batch {t['arena_batch']}): weights {t['weight_bytes']:,} "
            f"bytes (flash), arena {t['arena_bytes']:,} bytes (RAM) against {t['arena_bytes_unshared']:,} "
            f"with one buffer per tensor ({saving:.0%} saved)")


def _rf_text(rf: tuple[int, int], input_shape) -> str:
    return f"{rf[1]}" if len(input_shape) == 2 else f"{rf[0]}x{rf[1]}"


def build_report(net: CheckedNet, program: Program, batch: int | None = None) -> Report:
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
        **deployment_figures(program, deploy_batch),
    }
    return Report(net, program, batch, tuple(rows), totals)


def check(spec, batch: int | None = None) -> Report:
    """Load (if needed), check and lower a spec; the report of its shapes, counts and memory.
    Every stage is linear in the spec's size (benchmarks/check_size_limit.py); the objects they
    build hold no cycles, so the cycle collector is paused until the report is made."""
    with without_gc_pauses():
        net = check_net(load_spec(spec))
        return build_report(net, lower(net), batch)

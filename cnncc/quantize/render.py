"""QGraph + QValues -> C sources, from templates/int8/ through the one Jinja environment.

Zero points and clamps are compile-time constants of each kernel; the weights, tables, biases,
multipliers and shifts are read from the two blobs, so the same sources serve the Python module
(numpy arrays) and the emitted program (const arrays in flash).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codegen import Sources, environment, spec_label
from ..cvalues import c_comment, c_ident
from ..layers import format_shape
from ..version import __version__
from . import abi
from .graph import QGraph, QOp
from .layout import VECTOR, Layout
from .scheme import ADD_LEFT_SHIFT, QValues


@dataclass(frozen=True)
class Boundary:
    input_scale: float
    input_zero: int
    output_scale: float
    output_zero: int

    @property
    def input_inverse_scale(self) -> float:
        """1 / input_scale as a float32 (quantize_input's first guess), as a Python float."""
        return float(np.float32(1.0 / self.input_scale))


def boundary(graph: QGraph, values: QValues) -> Boundary:
    return Boundary(values.scales[graph.input], values.zero_points[graph.input], values.scales[graph.output],
                    values.zero_points[graph.output])


def _consts(op: QOp, values: QValues, layout: Layout) -> dict[str, int]:
    consts = {k: v for k, v in op.dims.items() if k != "PADDED" and not k.startswith("C_IN") or k in (
        "C_IN", "C_IN_PER_GROUP")}
    zeros = values.zero_points
    lo, hi = values.clamp(op)
    if op.kind in ("conv", "dense"):
        consts.update(IN_ZERO=zeros[op.inputs[0]], OUT_ZERO=zeros[op.output], OUT_MIN=lo, OUT_MAX=hi)
        if op.kind == "dense":
            consts.pop("IN_ZERO")  # folded into the bias: dense has no padding to fill
    elif op.kind == "avgpool":
        consts["IN_ZERO"] = zeros[op.inputs[0]]
    elif op.kind == "add":
        consts.update(LEFT_SHIFT=ADD_LEFT_SHIFT, OUT_ZERO=zeros[op.output], OUT_MIN=lo, OUT_MAX=hi)
        consts.update({f"IN_ZERO{i}": zeros[name] for i, name in enumerate(op.inputs)})
    elif op.kind == "concat":
        consts["OUT_ZERO"] = zeros[op.output]
        offset = 0
        for i, name in enumerate(op.inputs):
            consts.update({f"C_IN{i}": op.dims[f"C_IN{i}"], f"IN_ZERO{i}": zeros[name], f"OFFSET{i}": offset})
            offset += op.dims[f"C_IN{i}"]
    if op.kind == "conv" and not op.dims["PADDED"]:
        consts.pop("IN_ZERO")
    plan = layout.kernels.get(op.name)
    if plan is not None:
        consts.update(plan.consts)
    return consts


def _call(model: str, op: QOp, fn: str, layout: Layout) -> str:
    name = c_ident(op.name).upper()
    args = [f"arena + A_{name}"] + [f"arena + A_{c_ident(t).upper()}" for t in op.inputs]
    if op.weight_count:
        args.append(f"weights + W_{name}")
    args += [f"words + Q_{name}_{array.upper()}" for array in op.words]
    plan = layout.kernels.get(op.name)
    if plan is not None and plan.scratch_bytes:
        scratch = "arena + A_SCRATCH"
        args.append(scratch if plan.scratch_type == "int8_t" else f"({plan.scratch_type} *)({scratch})")
    return f"{fn}({', '.join(args)})"


def _comment(graph: QGraph, op: QOp) -> str:
    shapes = " + ".join(format_shape(graph.tensors[t].shape) for t in op.inputs)
    what = "+".join(op.layers) + (f" (line {op.line})" if op.line else "")
    extra = f"; clamp {op.clamp}" if op.clamp else ""
    extra += f"; {op.function} table" if op.function else ""
    return c_comment(f"{what}: int8 {op.kind}, {shapes} -> {format_shape(graph.tensors[op.output].shape)}{extra}")


def forward_calls(graph: QGraph, layout: Layout) -> list[tuple[str, str]]:
    """(op name, the C statement NAME_forward runs for it) in order (benchmarks/int8_profile.py times them)."""
    model = c_ident(graph.name)
    return [(op.name, _call(model, op, f"{model}_{c_ident(op.name)}_forward", layout)) for op in graph.ops]


def render_sources(graph: QGraph, layout: Layout, values: QValues, spec_path: str = "<spec>",
                   with_weights: bool = False) -> Sources:
    model = c_ident(graph.name)
    ops = []
    for op in graph.ops:
        fn = f"{model}_{c_ident(op.name)}_forward"
        plan = layout.kernels.get(op.name)
        ops.append({"op": op, "fn": fn, "consts": _consts(op, values, layout), "call": _call(model, op, fn, layout),
                    "template": plan.template if plan is not None else op.kind,
                    "comment": _comment(graph, op), "padded": bool(op.dims.get("PADDED")),
                    "inputs": list(range(len(op.inputs))), "uses_weights": bool(op.weight_count),
                    "uses_words": bool(op.words)})
    context = {"graph": graph, "layout": layout, "values": values, "model": model, "version": __version__,
               "spec_path": c_comment(spec_label(spec_path)), "ops": ops, "abi": abi,
               "boundary": boundary(graph, values), "with_weights": with_weights,
               "vector_lanes": layout.kernel_set == VECTOR}
    env = environment("vector")  # the shared environment; the int8 templates live in templates/int8/
    header = env.get_template("int8/model.h.j2").render(context)
    source = env.get_template("int8/model.c.j2").render(context)
    return Sources(model, header, source, abi.cdef(graph, layout))

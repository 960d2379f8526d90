"""The int8 report: per op its layers, kind, output scale and zero point, weight bytes and the
error of its output against float; the weight (flash) and arena (RAM) totals."""
from __future__ import annotations

from dataclasses import dataclass

from ..layers import format_shape


@dataclass(frozen=True)
class QuantRow:
    layers: str
    kind: str
    output_shape: tuple[int, ...]
    scale: float
    zero_point: int
    weight_bytes: int
    errors: dict


@dataclass(frozen=True)
class QuantReport:
    name: str
    method: str
    input: QuantRow
    rows: tuple[QuantRow, ...]
    weight_bytes: int
    arena_bytes: int
    arena_bytes_unshared: int
    dropped_softmax: str | None

    @classmethod
    def of(cls, qmodel) -> "QuantReport":
        g, v, layout = qmodel.graph, qmodel.values, qmodel.layout
        errors = qmodel.errors

        def row(label, kind, tensor, weight_bytes):
            return QuantRow(label, kind, g.tensors[tensor].shape, v.scales[tensor], v.zero_points[tensor],
                            weight_bytes, errors.get(tensor, {}))

        rows = tuple(row("+".join(op.layers), op.kind + (f"+{op.clamp}" if op.clamp else "")
                         + (f" ({op.function})" if op.function else ""), op.output,
                         op.weight_count + 4 * op.word_count) for op in g.ops)
        return cls(g.name, qmodel.method, row("input", "", g.input, 0), rows, layout.weight_bytes,
                   layout.arena_bytes, layout.unshared_bytes, g.dropped_softmax)

    def to_dict(self) -> dict:
        def one(r):
            return {"layers": r.layers, "kind": r.kind, "output_shape": list(r.output_shape), "scale": r.scale,
                    "zero_point": r.zero_point, "weight_bytes": r.weight_bytes, **r.errors}

        return {"name": self.name, "method": self.method, "input": one(self.input),
                "ops": [one(r) for r in self.rows], "weight_bytes": self.weight_bytes,
                "arena_bytes": self.arena_bytes, "arena_bytes_unshared": self.arena_bytes_unshared}

    def to_text(self) -> str:
        header = ["#", "op (layers)", "kind", "output", "scale", "zero", "bytes", "RMSE", "max abs", "SQNR dB"]
        body = []
        for i, r in enumerate((self.input,) + self.rows):
            e = r.errors
            body.append([str(i) if i else "", r.layers, r.kind, format_shape(r.output_shape), f"{r.scale:.6g}",
                         str(r.zero_point), f"{r.weight_bytes:,}" if i else "",
                         f"{e['rmse']:.4g}" if e else "-", f"{e['max_abs']:.4g}" if e else "-",
                         f"{e['sqnr_db']:.1f}" if e else "-"])
        widths = [max(len(row[c]) for row in [header] + body) for c in range(len(header))]
        right = {0, 4, 5, 6, 7, 8, 9}

        def fmt(row):
            return "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(fmt(header))
        lines = [f"{self.name}: int8 (TFLite scheme; calibration {self.method}; errors of the dequantized int8 "
                 "output of each op against float on the calibration data)", rule, fmt(header), rule]
        lines += [fmt(row) for row in body]
        lines += [rule, f"int8 weights {self.weight_bytes:,} bytes (flash: int8 weights and tables, int32 biases, "
                        f"multipliers and shifts)",
                  f"int8 arena {self.arena_bytes:,} bytes (RAM, batch 1: planned activations and the conv kernels' "
                  f"scratch) against {self.arena_bytes_unshared:,} with one buffer per tensor"]
        if self.dropped_softmax:
            lines.append(f"the final softmax ('{self.dropped_softmax}') is left out: outputs are dequantized logits")
        return "\n".join(lines)

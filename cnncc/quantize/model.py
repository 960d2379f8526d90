"""QuantizedModel: an int8 network compiled through cffi, float in and float out at the boundary.

    qmodel = model.quantize(calibration_x, method="minmax")   # or quantize(model, ...)
    qmodel.predict(x)        dequantized logits (the int8 C does everything between)
    qmodel.evaluate(x, y)    accuracy, and top-1 agreement with a float model if given
    qmodel.report()          per-layer scales, zero points, bytes and errors against float
    qmodel.save(path); QuantizedModel.load(path, spec)
    qmodel.export_onnx(path) the int8 network as ONNX, for onnxruntime (onnx_export.py)

The C kernels equal the integer reference (reference.py) bit for bit; `predict_int8` runs the
C, `reference(x_q)` the reference. quantize() and load() plan the host's vector kernel set
(vector_kernels.py: compiled -march=native for this machine); `cnncc emit --int8` writes the portable
strict-C99 set, which gives the same bits.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..buffers import aligned_copy, aligned_zeros
from ..build import build
from ..check import check_net
from ..spec import load_spec
from . import qfile, reference
from .abi import Bindings
from .boundary import dequantize_real, input_thresholds, quantize_real
from .calibrate import calibrate, calibration_array, float_tensors
from .errors import ErrorStats
from .graph import QGraph, QuantizeError, build_graph
from .layout import VECTOR, Layout, plan_layout
from .render import render_sources
from .scheme import QMAX, QMIN, QValues, quantize_values

REPORT_SAMPLES = 512  # calibration samples the per-layer errors are measured on


class QuantizedModel:
    def __init__(self, spec, graph: QGraph, layout: Layout, values: QValues, errors: dict | None = None,
                 method: str = "minmax", build_dir=None, cc: str | None = None,
                 cflags: tuple[str, ...] | None = None):
        self.spec, self.graph, self.layout, self.values = spec, graph, layout, values
        self.method = method
        self.errors = errors or {}
        self.sources = render_sources(graph, layout, values, spec.path)
        self.module = build(self.sources, build_dir, cflags=cflags, cc=cc)
        self._ffi = self.module.ffi
        self._c = Bindings(self.module.lib, graph.name)
        self._weights = aligned_copy(values.weights, np.int8)
        self._words = aligned_copy(values.words, np.int32)
        self._arena = aligned_zeros(max(1, layout.arena_bytes), np.int8)
        self._threshold, self._level = self._boundary_tables()
        # The model's own buffers, bound once: at batch 1 each cffi conversion is a visible share of a call.
        self._blobs = (self._ptr(self._arena, "int8_t[]"), self._ptr(self._weights, "int8_t[]"),
                       self._ptr(self._words, "int32_t[]"))
        self._tables = (() if self._threshold is None else
                        (self._ptr(self._threshold, "float[]"), self._ptr(self._level, "float[]")))
        self._input_shape, self._output_shape = tuple(self.input_shape), tuple(self.output_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.tensors[self.graph.input].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.graph.tensors[self.graph.output].shape

    def _ptr(self, array, ctype):
        """A C array (passed as a pointer) over a contiguous NumPy array's memory."""
        return self._ffi.from_buffer(ctype, array)

    # ---- the boundary: float <-> int8 ---------------------------------------------------
    def quantize_input(self, x) -> np.ndarray:
        """int8 inputs [N, ...]: q = clamp(round(x / scale) + zero point), rounding half away from zero."""
        x = np.asarray(x)
        expected = ("N",) + tuple(self.input_shape)
        if x.dtype.kind not in "biuf" or x.ndim != len(expected) or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"input must be a real array of shape ({', '.join(map(str, expected))}), got "
                             f"{x.dtype} {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input holds no samples (batch size 0)")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values")
        scale, zero = self.values.scales[self.graph.input], self.values.zero_points[self.graph.input]
        return quantize_real(x, scale, zero)

    def _boundary_tables(self):
        """The C boundary's tables (NAME_quantize_input, NAME_dequantize_output): the 255 input thresholds and
        the 256 dequantized outputs, float32. No thresholds when no float32 reaches the input's top level (a
        scale beyond float32's range): predict then quantizes in Python."""
        g, v = self.graph, self.values
        level = dequantize_real(np.arange(QMIN, QMAX + 1), v.scales[g.output], v.zero_points[g.output])
        try:
            threshold = input_thresholds(v.scales[g.input], v.zero_points[g.input])
        except ValueError:
            threshold = None
        return threshold, np.ascontiguousarray(level, np.float32)

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        scale, zero = self.values.scales[self.graph.output], self.values.zero_points[self.graph.output]
        return dequantize_real(q, scale, zero)

    # ---- running ------------------------------------------------------------------------
    def predict_int8(self, x_q) -> np.ndarray:
        """The int8 outputs [N, *output_shape] of int8 inputs [N, *input_shape], by the C kernels."""
        x_q = np.asarray(x_q)
        if x_q.dtype != np.int8 or tuple(x_q.shape[1:]) != tuple(self.input_shape) or x_q.shape[0] == 0:
            raise ValueError(f"int8 input must have shape (N, {', '.join(map(str, self.input_shape))}) and dtype "
                             f"int8, got {x_q.dtype} {tuple(x_q.shape)}")
        x_q = np.ascontiguousarray(x_q)
        n = x_q.shape[0]
        out = np.zeros((n,) + tuple(self.output_shape), np.int8)
        self._c.run(self._ptr(out, "int8_t[]"), self._ptr(x_q, "int8_t[]"), n, *self._blobs)
        return out

    def predict(self, x) -> np.ndarray:
        """Dequantized outputs (logits, when a final softmax was dropped) for float inputs: float32 input is
        quantized and dequantized in C (NAME_predict, the same numbers as quantize_input and
        dequantize_output), any other real dtype in Python."""
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and self._tables):
            return self.dequantize_output(self.predict_int8(self.quantize_input(x)))
        if x.shape[1:] != self._input_shape or x.shape[0] == 0:
            self.quantize_input(x)  # raises the error that names the expected shape
        x = np.ascontiguousarray(x)
        pointer = self._ptr(x, "float[]")
        if not self._c.all_finite(pointer, x.size):  # in C: a quarter of numpy's time at batch 1
            raise ValueError("input contains NaN or infinite values")
        out = np.empty((x.shape[0],) + self._output_shape, np.float32)
        self._c.predict(self._ptr(out, "float[]"), pointer, x.shape[0], *self._blobs, *self._tables)
        return out

    forward = predict

    def reference(self, x_q) -> dict[str, np.ndarray]:
        """Every int8 tensor by the NumPy integer reference: name -> int8 [N, size]."""
        return reference.run(self.graph, self.values, self.layout, np.asarray(x_q, np.int8))

    def evaluate(self, x, y, float_model=None, batch_size: int = 1000) -> dict[str, float]:
        """accuracy of the int8 model on labels y; with a float model, its accuracy and the top-1
        agreement of the two."""
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != np.asarray(x).shape[0]:
            raise ValueError("labels must be a vector with one class index per sample")
        q_top, f_top = [], []
        for start in range(0, len(y), batch_size):
            part = x[start:start + batch_size]
            q_top.append(self.predict(part).reshape(len(part), -1).argmax(axis=1))
            if float_model is not None:
                f_top.append(float_model.predict(part).reshape(len(part), -1).argmax(axis=1))
        q_top = np.concatenate(q_top)
        result = {"accuracy": float(np.mean(q_top == y))}
        if float_model is not None:
            f_top = np.concatenate(f_top)
            result.update(float_accuracy=float(np.mean(f_top == y)), agreement=float(np.mean(f_top == q_top)))
        return result

    # ---- files and report --------------------------------------------------------------
    def save(self, path) -> None:
        """The quantized model, written atomically (.npz); load it with QuantizedModel.load(path, spec)."""
        errors = {name: {k: qfile.finite_or_text(v) for k, v in e.items()} for name, e in self.errors.items()}
        qfile.save(path, self.spec, self.graph, self.values, {"method": self.method, "errors": errors})

    @classmethod
    def load(cls, path, spec, build_dir=None, cc: str | None = None,
             cflags: tuple[str, ...] | None = None) -> "QuantizedModel":
        """A file written by save, validated completely against `spec` before anything is built."""
        spec = load_spec(spec)
        graph = build_graph(check_net(spec))
        layout = plan_layout(graph, VECTOR)
        values, meta = qfile.load(path, spec, graph, layout)
        errors = {name: {k: float(v) for k, v in e.items()} for name, e in meta.get("errors", {}).items()}
        return cls(spec, graph, layout, values, errors, str(meta.get("method", "minmax")), build_dir, cc, cflags)

    def export_onnx(self, path, opset: int = 17, requantize: str = "float"):
        """Write this int8 model as ONNX, for checking it with another runtime (onnx_export.py):
        requantize="float" is the standard form (QLinearConv, QDQ), "fixed_point" writes TFLite's
        requantization itself in integer operators. Needs the `onnx` package."""
        from .onnx_export import export_onnx

        return export_onnx(self, path, opset, requantize)

    def report(self):
        from .qreport import QuantReport

        return QuantReport.of(self)

    def __repr__(self) -> str:
        return (f"<cnncc.QuantizedModel {self.graph.name}: int8, {len(self.graph.ops)} ops, weights "
                f"{self.layout.weight_bytes:,} bytes, arena {self.layout.arena_bytes:,} bytes>")


def quantize(model, calibration, method: str = "minmax", percentile: float = 99.99, build_dir=None,
             cc: str | None = None, cflags: tuple[str, ...] | None = None) -> QuantizedModel:
    """Post-training int8 quantization of a float Model, calibrated on `calibration` (an array
    [N, *input_shape] or an .npz with an `x` array). Refuses (QuantizeError) before doing
    anything if a layer cannot be quantized."""
    graph = build_graph(model.analysis.net)
    layout = plan_layout(graph, VECTOR)
    x = calibration_array(calibration, model.input_shape)
    model = _with_every_output(model, build_dir)
    ranges = calibrate(model, graph, x, method, percentile)
    values = quantize_values(graph, layout, model.params, ranges)
    errors = layer_errors(model, graph, layout, values, x[:REPORT_SAMPLES])
    return QuantizedModel(model.spec, graph, layout, values, errors, method, build_dir, cc, cflags)


def _with_every_output(model, build_dir):
    """Calibration reads every layer's float output; a build whose batchnorms and adds apply the
    relu after them stores none of their own (Program.fused_away), so it is rebuilt without that
    fusion, with the same weights (the same numbers: fusion changes no bit)."""
    if not model.program.fused_away:
        return model
    from ..runtime import Model

    unfused = Model.compile(model.spec, build_dir=build_dir, options=replace(model.analysis.options, fuse=False))
    unfused.restore(model.state())
    return unfused


def layer_errors(model, graph: QGraph, layout: Layout, values: QValues, x: np.ndarray) -> dict[str, dict]:
    """Per tensor: the dequantized int8 value (integer reference) against the float model's."""
    stats = {name: ErrorStats() for name in graph.tensors}
    scale, zero = values.scales[graph.input], values.zero_points[graph.input]
    for start in range(0, x.shape[0], 128):
        part = x[start:start + 128]
        floats = float_tensors(model, graph, part)
        x_q = quantize_real(part, scale, zero)
        ints = reference.run(graph, values, layout, x_q)
        for name in graph.tensors:
            real = values.scales[name] * (ints[name].astype(np.float64) - values.zero_points[name])
            stats[name].add(floats[name], real)
    return {name: s.figures() for name, s in stats.items()}


__all__ = ["QuantizedModel", "QuantizeError", "quantize"]

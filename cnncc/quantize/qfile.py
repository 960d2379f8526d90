"""Quantized-model files (.npz): written atomically, validated completely before use.

A file holds the int8 weights blob, the int32 words blob, every tensor's scale and zero point,
and metadata (format, spec name and fingerprint, calibration method, per-layer errors). It is
loaded against the spec it was made from: the structure (and so every array's size) comes
from the spec, and the file must match it exactly.
"""
from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np

from ..files import write_bytes_atomically
from . import arith
from .graph import QGraph, QuantizeError
from .layout import Layout
from .scheme import QMAX, QMIN, WEIGHT_MAX, QValues

FORMAT = "cnncc-int8-1"
META = "__cnncc_int8_meta__"


def write_atomically(path, data: bytes) -> None:
    """The old file or the complete new one, never half of one (files.write_atomically, the one
    atomic writer: non-regular targets refused, symlinks written through)."""
    write_bytes_atomically(path, data, make_parents=True)


def save(path, spec, graph: QGraph, values: QValues, meta: dict) -> None:
    names = list(graph.tensors)
    buffer = io.BytesIO()
    header = {"format": FORMAT, "spec": spec.name, "fingerprint": spec.fingerprint(), "tensors": names, **meta}
    np.savez(buffer, weights=values.weights, words=values.words,
             scales=np.array([values.scales[n] for n in names], np.float64),
             zero_points=np.array([values.zero_points[n] for n in names], np.int32),
             **{META: np.frombuffer(json.dumps(header).encode(), np.uint8)})
    write_atomically(path, buffer.getvalue())


def _fail(path, message):
    raise QuantizeError(f"{path}: {message}")


def load(path, spec, graph: QGraph, layout: Layout) -> tuple[QValues, dict]:
    """(values, metadata) of a file made for this spec, or QuantizeError saying what is wrong."""
    expected = {"weights": (np.int8, (layout.weight_count,)), "words": (np.int32, (layout.word_count,)),
                "scales": (np.float64, (len(graph.tensors),)), "zero_points": (np.int32, (len(graph.tensors),))}
    limit = max(layout.weight_count, 4 * layout.word_count, 8 * len(graph.tensors)) + (1 << 20)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > limit:
                    _fail(path, f"member '{info.filename}' expands to {info.file_size:,} bytes, more than this "
                                "model could need")
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        _fail(path, "no such file")
    except QuantizeError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        _fail(path, f"not a readable quantized-model file (corrupt or truncated?): {exc}")
    if META not in arrays:
        _fail(path, "not a cnncc quantized-model file (no metadata)")
    try:
        meta = json.loads(arrays.pop(META).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        _fail(path, "corrupt metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(path, f"unknown format {meta.get('format') if isinstance(meta, dict) else meta!r} (expected {FORMAT})")
    if meta.get("fingerprint") != spec.fingerprint():
        _fail(path, f"made from spec '{meta.get('spec')}' (fingerprint {meta.get('fingerprint')}), which differs "
                    f"from spec '{spec.name}' ({spec.fingerprint()})")
    if meta.get("tensors") != list(graph.tensors):
        _fail(path, "its tensors do not match this spec's int8 graph")
    for key, (dtype, shape) in expected.items():
        array = arrays.get(key)
        if array is None:
            _fail(path, f"missing array '{key}'")
        if array.dtype != dtype or array.shape != shape:
            _fail(path, f"array '{key}' is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    scales, zeros = arrays["scales"], arrays["zero_points"]
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        _fail(path, "a tensor scale is not a finite positive number")
    if zeros.min() < QMIN or zeros.max() > QMAX:
        _fail(path, f"a zero point lies outside [{QMIN}, {QMAX}]")
    values = QValues(dict(zip(graph.tensors, scales.tolist())), dict(zip(graph.tensors, zeros.tolist())),
                     arrays["weights"].copy(), arrays["words"].copy())
    _check_consistent(path, graph, layout, values)
    errors = meta.get("errors", {})
    if not isinstance(errors, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, (int, float)) or x in ("inf", "-inf") for x in v.values())
            for v in errors.values()):
        _fail(path, "corrupt per-layer error figures")
    return values, meta


def _check_consistent(path, graph: QGraph, layout: Layout, values: QValues) -> None:
    for name, tensor in graph.tensors.items():
        if tensor.fixed is not None and (values.scales[name], values.zero_points[name]) != tensor.fixed:
            _fail(path, f"tensor '{name}' must have TFLite's fixed quantization {tensor.fixed}")
        if tensor.same_as is not None and (values.scales[name], values.zero_points[name]) != (
                values.scales[tensor.same_as], values.zero_points[tensor.same_as]):
            _fail(path, f"tensor '{name}' must be quantized exactly as its input '{tensor.same_as}'")
    for op in graph.ops:
        if op.kind in ("conv", "dense"):
            start = layout.weight_offsets[op.name]
            w = values.weights[start:start + op.weight_count]
            if w.size and w.min() < -WEIGHT_MAX:
                _fail(path, f"op '{op.name}': a weight is -128; int8 weights lie in [-127, 127]")
        at = layout.word_offsets[op.name]
        if "multiplier" in at:
            n = op.words["multiplier"]
            m = values.words[at["multiplier"]:at["multiplier"] + n].astype(np.int64)
            s = values.words[at["shift"]:at["shift"] + n].astype(np.int64)
            if ((m != 0) & (m < (1 << 30))).any() or (m < 0).any():
                _fail(path, f"op '{op.name}': a multiplier outside [2^30, 2^31) (or 0)")
            if s.min() < -31 or s.max() > arith.MAX_SHIFT:
                _fail(path, f"op '{op.name}': a shift outside [-31, {arith.MAX_SHIFT}]")


def finite_or_text(value: float):
    """JSON has no infinities: an infinite SQNR (no error at all) is stored as text."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")

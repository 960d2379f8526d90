"""Calibration: the float range of every int8 tensor, observed on user data.

The float model runs inference on the data in batches; every tensor's float value is read from
the model's public surface (Model.activation for a layer's output; the op's slot in
flat_activations for the value before a fused activation). `minmax` keeps the extremes;
`percentile` keeps a bounded, seeded sample of each tensor's values and takes the
(100 - p)th and pth percentiles, which clips rare outliers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .graph import QGraph, QuantizeError

METHODS = ("minmax", "percentile")
BATCH = 256
SAMPLE_PER_TENSOR = 1 << 20  # values kept per tensor for percentiles


def calibration_array(data, input_shape) -> np.ndarray:
    """Calibration samples from an array or an .npz file (its `x`, or `x_train`, array)."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in ("x", "x_train", "calibration") if k in archive.files), None)
                if key is None:
                    raise QuantizeError(f"{path}: a calibration .npz needs an array named x (or x_train); it has "
                                        f"{', '.join(archive.files) or 'none'}")
                data = archive[key]
        except (OSError, ValueError) as exc:
            if isinstance(exc, QuantizeError):
                raise
            raise QuantizeError(f"{path}: not a readable .npz file: {exc}") from None
    x = np.asarray(data)
    if x.ndim == len(input_shape):
        x = x[None]
    if x.dtype.kind not in "biuf" or tuple(x.shape[1:]) != tuple(input_shape) or x.shape[0] == 0:
        raise QuantizeError(f"calibration data must be a non-empty real array of shape (N, "
                            f"{', '.join(map(str, input_shape))}), got {x.dtype} {tuple(x.shape)}")
    x = np.ascontiguousarray(x, np.float32 if x.dtype != np.float64 else np.float64)
    if not np.isfinite(x).all():
        raise QuantizeError("calibration data contains NaN or infinite values")
    return x


def float_tensors(model, graph: QGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The float value of every int8 tensor for a batch x (one inference pass of the float model)."""
    model.predict(x)
    n = x.shape[0]
    pre = {op.layer: op.output for op in model.program.ops if op.kind == model.spec.layer(op.layer).kind}
    values = {}
    for name, tensor in graph.tensors.items():
        layer, which = tensor.source
        if layer == "input":
            values[name] = x.reshape(n, -1)
        elif which == "post":
            values[name] = np.asarray(model.activation(layer, n)).reshape(n, -1)
        else:
            t = pre[layer]
            values[name] = model.flat_activations(n)[t.offset * n:(t.offset + t.size) * n].reshape(n, -1)
    return values


def calibrate(model, graph: QGraph, x: np.ndarray, method: str = "minmax",
              percentile: float = 99.99, seed: int = 0) -> dict[str, tuple[float, float]]:
    if method not in METHODS:
        raise QuantizeError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (isinstance(percentile, (int, float)) and 50.0 < percentile <= 100.0):
        raise QuantizeError(f"percentile must be in (50, 100], got {percentile!r}")
    rng = np.random.default_rng(seed)
    batches = range(0, x.shape[0], BATCH)
    keep = max(1, SAMPLE_PER_TENSOR // len(batches))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in graph.tensors}
    for start in batches:
        for name, value in float_tensors(model, graph, x[start:start + BATCH]).items():
            flat = value.ravel()
            lows[name] = min(lows.get(name, np.inf), float(flat.min()))
            highs[name] = max(highs.get(name, -np.inf), float(flat.max()))
            if method == "percentile":
                samples[name].append(flat if flat.size <= keep else rng.choice(flat, keep, replace=False))
    if method == "minmax":
        return {name: (lows[name], highs[name]) for name in graph.tensors}
    return {name: (float(np.percentile(np.concatenate(s), 100.0 - percentile)),
                   float(np.percentile(np.concatenate(s), percentile))) for name, s in samples.items()}

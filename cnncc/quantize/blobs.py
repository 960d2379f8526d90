"""An op's arrays, read out of the two blobs a QuantizedModel holds (QValues.weights, the int8
blob, and QValues.words, the int32 one) at the offsets its Layout gives. The integer reference
and the ONNX export read them here; nothing else needs to know how the blobs are laid out."""
from __future__ import annotations

import numpy as np

from .graph import LUT_SIZE, QOp
from .layout import Layout
from .scheme import QValues


def words(values: QValues, layout: Layout, op: QOp, name: str) -> np.ndarray:
    """One of the op's int32 arrays (QOp.words: bias, multiplier, shift), as int64."""
    start = layout.word_offsets[op.name][name]
    return values.words[start:start + op.words[name]].astype(np.int64)


def weights(values: QValues, layout: Layout, op: QOp) -> np.ndarray:
    """A conv's or dense's int8 weights [C_OUT, K_GROUP] (K_GROUP in (C_IN_PER_GROUP, KH, KW) order)."""
    c, k = op.dims["C_OUT"], op.dims["K_GROUP"]
    start = layout.weight_offsets[op.name]
    return values.weights[start:start + c * k].reshape(c, k)


def table(values: QValues, layout: Layout, op: QOp) -> np.ndarray:
    """A lut op's 256 int8 outputs, indexed by the input value + 128."""
    start = layout.weight_offsets[op.name]
    return values.weights[start:start + LUT_SIZE]


def true_bias(values: QValues, layout: Layout, op: QOp) -> np.ndarray:
    """The quantized bias itself (int32 values as int64, scale = input scale * weight scale). The
    stored one has -z_in * sum(weights) folded in, for the C kernels, which sum raw inputs (padding as z_in)."""
    return words(values, layout, op, "bias") + values.zero_points[op.inputs[0]] * \
        weights(values, layout, op).astype(np.int64).sum(axis=1)

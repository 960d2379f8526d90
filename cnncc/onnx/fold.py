"""Constant folding of the small subgraphs exporters write for shapes and paddings.

TorchScript computes a Reshape's target as Shape -> Gather -> Unsqueeze -> Concat, and a Pad's
widths with ConstantOfShape, Slice and Transpose. Their inputs are initializers, Constants and the
shapes of activations, whose only unknown is the batch size. So every constant is evaluated twice,
at two different batch sizes (PROBES): a value that differs between the two depends on the batch,
and where the batch is expected (a Reshape's first dimension) a value equal to it is recognised.

Only the ops below are folded, each in NumPy, with every output's size bounded before it is made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reader import onnx

PROBES = (2, 3)  # two batch sizes: what a Shape of an activation reports, one per evaluation
MAX_FOLDED_ELEMENTS = 1 << 22


class FoldError(ValueError):
    """A node cannot be folded; the message says why (the caller names the node)."""


@dataclass(frozen=True)
class Const:
    """A constant as evaluated at each probe batch size (the same array when it does not depend on it)."""
    values: tuple[np.ndarray, ...]

    @staticmethod
    def of(array) -> "Const":
        array = np.asarray(array)
        return Const((array,) * len(PROBES))

    @property
    def fixed(self) -> np.ndarray | None:
        """The value, or None where it depends on the batch size."""
        first = self.values[0]
        same = all(v.shape == first.shape and np.array_equal(v, first) for v in self.values[1:])
        return first if same else None


def _bounded(shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=object)) > MAX_FOLDED_ELEMENTS:
        raise FoldError(f"it would make a constant of shape {list(shape)}, larger than cnncc folds")
    return shape


def _axes(inputs, attrs, index):
    """Axes from the input at `index` (newer opsets) or the `axes` attribute (older ones)."""
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return list(attrs.get("axes", []))


def _shape_of(inputs, attrs):
    shape = np.asarray(inputs[0].shape, np.int64)
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    return shape[slice(start, end)]


def _reshape(inputs, attrs):
    data, target = inputs[0], [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    if not attrs.get("allowzero", 0):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


def _slice(inputs, attrs):
    data = inputs[0]
    starts, ends = np.asarray(inputs[1]).reshape(-1), np.asarray(inputs[2]).reshape(-1)
    axes = np.asarray(inputs[3]).reshape(-1) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = np.asarray(inputs[4]).reshape(-1) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise FoldError("a Slice step of 0")
        n = data.shape[int(axis)]
        # ONNX clamps like Python, and INT64 extremes mean "to the end"
        start, end = int(np.clip(start, -n - 1, n)), int(np.clip(end, -n - 1, n))
        index[int(axis)] = slice(start, None if (step < 0 and end < -n) else end, int(step))
    return data[tuple(index)]


def _binary(fn):
    def run(inputs, attrs):
        a, b = (np.asarray(x) for x in inputs[:2])
        _bounded(np.broadcast_shapes(a.shape, b.shape))
        return fn(a, b)
    return run


def _divide(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if (b == 0).any():
            raise FoldError("an integer division by zero")
        return (np.trunc(a / b)).astype(np.result_type(a, b))  # ONNX integer Div truncates
    return a / b


def _expand(inputs, attrs):
    data, shape = np.asarray(inputs[0]), [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    return np.broadcast_to(data, _bounded(np.broadcast_shapes(data.shape, tuple(shape)))).copy()


def _constant_of_shape(inputs, attrs):
    shape = _bounded(np.asarray(inputs[0]).reshape(-1))
    value = attrs.get("value")
    fill = value.reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(shape, fill, dtype=fill.dtype)


FOLDERS = {
    "Identity": lambda inputs, attrs: inputs[0],
    "Cast": lambda inputs, attrs: inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])),
    "Shape": _shape_of,
    "Gather": lambda inputs, attrs: np.take(inputs[0], np.asarray(inputs[1], np.int64), axis=attrs.get("axis", 0)),
    "Unsqueeze": lambda inputs, attrs: np.expand_dims(inputs[0], tuple(_axes(inputs, attrs, 1))),
    "Squeeze": lambda inputs, attrs: np.squeeze(inputs[0], tuple(_axes(inputs, attrs, 1)) or None),
    "Concat": lambda inputs, attrs: np.concatenate([np.asarray(x) for x in inputs], axis=attrs["axis"]),
    "Slice": _slice,
    "Reshape": _reshape,
    "Transpose": lambda inputs, attrs: np.transpose(inputs[0], attrs.get("perm")),
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_divide),
    "Neg": lambda inputs, attrs: np.negative(inputs[0]),
    "ConstantOfShape": _constant_of_shape, "Expand": _expand,
    "Equal": _binary(np.equal), "Where": lambda inputs, attrs: np.where(*_broadcast_checked(inputs[:3])),
}


def _broadcast_checked(arrays):
    arrays = [np.asarray(a) for a in arrays]
    _bounded(np.broadcast_shapes(*(a.shape for a in arrays)))
    return arrays


def constant_node(attrs) -> Const:
    """The value of a Constant node."""
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return Const.of(np.asarray(attrs[key], dtype=dtype))
    raise FoldError(f"a Constant with {', '.join(attrs) or 'no value'}: cnncc reads value, value_float(s) and "
                    "value_int(s)")


def fold(op: str, inputs: list[Const | None], attrs: dict) -> Const:
    """The node evaluated at every probe batch size; FoldError if it cannot be."""
    if op not in FOLDERS:
        raise FoldError(f"cnncc folds only {', '.join(sorted(FOLDERS))} on constants")
    results = []
    for probe in range(len(PROBES)):
        args = [None if value is None else value.values[probe] for value in inputs]
        try:
            result = np.asarray(FOLDERS[op](args, attrs))
        except FoldError:
            raise
        except (ValueError, IndexError, TypeError, KeyError) as exc:  # AxisError is both of the first two
            raise FoldError(f"it cannot be evaluated on its constant inputs: {exc}") from None
        _bounded(result.shape)
        results.append(result)
    return Const(tuple(results))

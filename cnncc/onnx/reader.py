"""Read an ONNX file that may be corrupt or hostile, with bounded memory and time.

The file's size is checked before it is read; the protobuf is parsed without following external
data; local functions (which the dynamo exporter emits) are inlined only after their expanded size
is counted; every tensor's declared size is checked against the data it holds (or against its
external file, which must lie inside the model's own directory) before any array is made.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..extras import require

onnx = require("onnx", "onnx", "ONNX import")
import onnx.inliner  # noqa: E402  (a submodule `import onnx` does not load)
from onnx import TensorProto, numpy_helper  # noqa: E402

MAX_FILE_BYTES = 1 << 30  # protobuf itself cannot hold more than 2 GiB
MAX_EXTERNAL_BYTES = 1 << 32  # all external data together
MAX_TENSOR_ELEMENTS = (1 << 31) - 1  # cnncc's own limit on a network's parameters
MAX_NODES = 100_000  # after inlining local functions

FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
_TYPED_FIELDS = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data",
                 TensorProto.INT64: "int64_data", TensorProto.INT32: "int32_data", TensorProto.BOOL: "int32_data",
                 TensorProto.UINT8: "int32_data", TensorProto.INT8: "int32_data", TensorProto.INT16: "int32_data",
                 TensorProto.FLOAT16: "int32_data", TensorProto.UINT64: "uint64_data", TensorProto.UINT32: "uint64_data"}


class OnnxFileError(ValueError):
    """A file that is not a readable, safe ONNX model."""


def read_model(path) -> "onnx.ModelProto":
    """The parsed model with its local functions inlined (its tensors still unchecked)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise OnnxFileError(f"{path}: cannot read: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise OnnxFileError(f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} an ONNX file can hold")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxFileError(f"{path}: cannot read: {exc.strerror}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or a RecursionError from absurd nesting
        raise OnnxFileError(f"{path}: not an ONNX model (truncated or corrupt protobuf: {exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxFileError(f"{path}: not an ONNX model (it has no graph nodes)")
    if model.functions:
        expanded = _expanded_size(model)
        if expanded > MAX_NODES:
            raise OnnxFileError(f"{path}: its local functions expand to {expanded:,} nodes, more than {MAX_NODES:,}")
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise OnnxFileError(f"{path}: cannot inline its local functions: {exc}") from None
    if len(model.graph.node) > MAX_NODES:
        raise OnnxFileError(f"{path}: {len(model.graph.node):,} nodes, more than {MAX_NODES:,}")
    return model


def _expanded_size(model) -> int:
    """Nodes of the graph with every local function call replaced by its body, counted without
    expanding anything (a function calling another twice, ten deep, would be 1024 copies)."""
    functions = {(f.domain, f.name): f for f in model.functions}
    sizes: dict = {}

    def size(key, active=()):
        if key in active:
            raise OnnxFileError(f"local function {key[1]!r} calls itself")
        if key not in sizes:
            sizes[key] = sum(size((n.domain, n.op_type), active + (key,)) if (n.domain, n.op_type) in functions
                             else 1 for n in functions[key].node)
        return sizes[key]

    return sum(size((n.domain, n.op_type)) if (n.domain, n.op_type) in functions else 1 for n in model.graph.node)


def _declared_elements(tensor) -> int:
    if any(d < 0 for d in tensor.dims):
        raise OnnxFileError(f"tensor {tensor.name!r} declares a negative dimension {list(tensor.dims)}")
    n = 1
    for d in tensor.dims:
        n *= int(d)
    if n > MAX_TENSOR_ELEMENTS:
        raise OnnxFileError(f"tensor {tensor.name!r} declares {n:,} elements {list(tensor.dims)}, more than "
                            f"{MAX_TENSOR_ELEMENTS:,}")
    return n


class TensorReader:
    """Arrays of a model's TensorProtos, each checked before it is made; external data is read
    only from files inside `directory`, and at most MAX_EXTERNAL_BYTES of it in all."""

    def __init__(self, directory):
        self.directory = Path(directory).resolve()
        self.external_bytes = 0

    def array(self, tensor) -> np.ndarray:
        n = _declared_elements(tensor)
        if tensor.data_type == TensorProto.STRING or tensor.data_type not in _TYPED_FIELDS:
            name = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() \
                else str(tensor.data_type)
            raise OnnxFileError(f"tensor {tensor.name!r} has element type {name}, which cnncc does not read")
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        if tensor.data_location == TensorProto.EXTERNAL:
            return self._external(tensor, n, itemsize)
        if tensor.HasField("raw_data"):
            stored = len(tensor.raw_data)
            expected = n * itemsize
        else:
            stored = len(getattr(tensor, _TYPED_FIELDS[tensor.data_type]))
            expected = n
        if stored != expected:
            raise OnnxFileError(f"tensor {tensor.name!r} declares shape {list(tensor.dims)} ({n:,} elements) "
                                f"but holds {stored:,} {'bytes' if tensor.HasField('raw_data') else 'values'}")
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:
            raise OnnxFileError(f"tensor {tensor.name!r} cannot be read: {exc}") from None

    def _external(self, tensor, n: int, itemsize: int) -> np.ndarray:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", n * itemsize))
        except ValueError:
            raise OnnxFileError(f"tensor {tensor.name!r}: external data offset or length is not an integer") from None
        target = (self.directory / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(self.directory):
            raise OnnxFileError(f"tensor {tensor.name!r}: external data path {location!r} lies outside the model's "
                                f"directory {self.directory}; only files beside the model are read")
        if length != n * itemsize or offset < 0:
            raise OnnxFileError(f"tensor {tensor.name!r} declares {n:,} elements but its external data has "
                                f"length {length:,} at offset {offset:,}")
        self.external_bytes += length
        if self.external_bytes > MAX_EXTERNAL_BYTES:
            raise OnnxFileError(f"external data of more than {MAX_EXTERNAL_BYTES:,} bytes in all")
        try:
            with open(target, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                if offset + length > handle.tell():
                    raise OnnxFileError(f"tensor {tensor.name!r}: external file {location!r} has {handle.tell():,} "
                                        f"bytes, fewer than offset {offset:,} + length {length:,}")
                handle.seek(offset)
                data = handle.read(length)
        except OSError as exc:
            raise OnnxFileError(f"tensor {tensor.name!r}: cannot read external data {location!r}: "
                                f"{exc.strerror}") from None
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims)).astype(dtype.newbyteorder("="))

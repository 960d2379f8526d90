"""ONNX in and out: `export(model, path)` writes a compiled Model as an ONNX file, `load(path)`
reads one as a (Spec, weights) pair. Both need the `onnx` package (pip install "cnncc[onnx]"),
imported only when they are called."""
from __future__ import annotations


def export(model, path, opset: int = 17):
    """Write `model` (a compiled cnncc.Model, with its current weights) to `path` as ONNX
    (opset 13 to 21); the file passes onnx.checker's full check."""
    from .exporter import export as write

    return write(model, path, opset)


def load(path):
    """(Spec, weights) of an ONNX file: weights keyed like Model.params. Raises UnsupportedModel
    naming the node, its op type and inputs and what is supported, for anything cnncc cannot
    express, and OnnxFileError for a file that cannot be read safely."""
    from .importer import load as read

    return read(path)


__all__ = ["export", "load"]

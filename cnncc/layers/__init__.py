"""Every layer kind, registered by importing its module."""
from . import activation, batchnorm, conv, dense, pool, structure  # noqa: F401  (registration)
from .base import GLOBAL, REGISTRY, LayerKind, ParamDecl, Shape, ShapeError, Window, as_chw, format_shape, numel

__all__ = ["GLOBAL", "REGISTRY", "LayerKind", "ParamDecl", "Shape", "ShapeError", "Window",
           "as_chw", "format_shape", "numel"]

"""Every layer kind, registered by importing its module: every module of this package is
imported, in name order (which is also the order of the README's reference), so a new kind
is one new module (or one class in a sibling kind's module) and nothing else."""
import importlib
import pkgutil

from .base import GLOBAL, REGISTRY, LayerKind, ParamDecl, Shape, ShapeError, Window, as_chw, format_shape, numel

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["GLOBAL", "REGISTRY", "LayerKind", "ParamDecl", "Shape", "ShapeError", "Window",
           "as_chw", "format_shape", "numel"]

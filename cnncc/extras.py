"""Optional dependencies (pyproject's extras): imported only by the modules that need them, so
importing cnncc never needs onnx, onnxruntime or torch, and a missing one says what to install."""
from __future__ import annotations

import importlib


class MissingExtra(ImportError):
    """An optional package that a cnncc feature needs is not installed."""


def require(module: str, extra: str, feature: str):
    """The imported `module`, or MissingExtra naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs the Python package '{module.split('.')[0]}', which is not "
                           f"installed: pip install \"cnncc[{extra}]\"") from None

"""cnncc: a declarative CNN compiler.

    spec.yaml -> load_spec -> Spec -> check -> CheckedNet -> ir.lower -> Program
              -> codegen.render -> C sources -> build -> loaded module -> Model

Public API: load_spec, check, compile, Model, SpecError.
"""
from .errors import SpecError
from .report import Report, check
from .spec import Spec, load_spec

__version__ = "0.1.0"


def compile(spec, build_dir=None, **options):  # noqa: A001  (the name users expect)
    """Render, compile (or load from the cache) and wrap a spec: a trainable `Model`."""
    from .runtime import Model

    return Model.compile(spec, build_dir=build_dir, **options)


def __getattr__(name):
    if name == "Model":
        from .runtime import Model

        return Model
    if name in ("onnx", "torch"):  # the interop modules, imported on first use (their packages are extras)
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


__all__ = ["Model", "Report", "Spec", "SpecError", "check", "compile", "load_spec", "__version__"]

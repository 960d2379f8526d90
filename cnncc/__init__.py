"""cnncc: a declarative CNN compiler.

    spec.yaml -> load_spec -> Spec -> check -> CheckedNet -> lowering.lower -> Program
              -> codegen.render -> C sources -> build -> loaded module -> Model

Public API: load_spec, check, compile, Model, SpecError; distributed.MPI for data-parallel training.
"""
from .errors import SpecError
from .pipeline import check
from .report import Report
from .spec import Spec, load_spec
from .version import __version__


def compile(spec, build_dir=None, **options):  # noqa: A001  (the name users expect)
    """Render, compile (or load from the cache) and wrap a spec: a trainable `Model`."""
    from .runtime import Model

    return Model.compile(spec, build_dir=build_dir, **options)


def __getattr__(name):
    if name == "Model":
        from .runtime import Model

        return Model
    if name in ("distributed", "onnx", "torch"):  # imported on first use: their packages are extras
        import importlib                            # (cnncc.distributed loads mpi4py only when MPI() is made)

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


__all__ = ["Model", "Report", "Spec", "SpecError", "check", "compile", "load_spec", "__version__"]

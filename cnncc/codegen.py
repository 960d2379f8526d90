"""Program -> C sources, through the one Jinja environment.

Templates print and loop; every number, name and choice they use is a field of the IR.
Values reach C only through the filters of cvalues.py. The header's declarations come from
abi.py, which also gives cffi its cdef.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .version import __version__
from . import abi
from .backends import arguments
from .cvalues import c_comment, c_expr, c_float, c_ident, c_int
from .ir import Program


def template_dir() -> Path:
    """templates/ of the source checkout this package was imported from, or else the copy
    installed inside the package. The checkout comes first: a second checkout imported through
    PYTHONPATH must render its own templates, not those of another checkout installed editable."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "templates" / "model.c.j2").is_file():
        return checkout / "templates"
    from importlib.resources import files

    return Path(str(files("cnncc.templates")))


@lru_cache(maxsize=4)
def environment(backend: str = "vector") -> "jinja2.Environment":
    """The one environment of a backend: its template overlay (if any) before the shared templates."""
    import jinja2  # here, not at the top: loading a cached model never renders

    from .backends import backend as backend_named
    from .template_cache import template_code_cache

    overlay = backend_named(backend).template_overlay
    folders = ([str(template_dir() / overlay)] if overlay else []) + [str(template_dir())]
    options = dict(undefined=jinja2.StrictUndefined,  # a misspelt variable fails here, not as C far away
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folders), bytecode_cache=template_code_cache(options),
                             **options)
    env.filters.update(c_ident=c_ident, c_int=c_int, c_float=c_float, c_expr=c_expr, c_comment=c_comment)
    return env


@dataclass(frozen=True)
class Sources:
    name: str
    header: str  # NAME.h
    source: str  # NAME.c
    cdef: str  # the header's declarations, for cffi


def spec_label(spec_path: str) -> str:
    """How the generated files name their spec: the file name, or a <...> label as it is."""
    return spec_path if spec_path.startswith("<") else Path(spec_path).name


# What decides the rendered text besides the program and the spec label: the templates and the
# package code that templates read through (the IR's properties, the ABI, the value filters, the
# losses', optimizers' and backends' rules: the kernel arguments). The kernel plans are in the IR
# itself. Not the CLI, training or data code: editing those leaves every cached build valid.
RENDERER_CODE = ("codegen.py", "cvalues.py", "abi.py", "ir.py", "build.py", "losses", "optimizers", "backends")


@lru_cache(maxsize=1)
def renderer_digest() -> str:
    """A hash of everything besides the program and the spec label that decides the rendered
    text or the build (the build cache keys a program on it)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    templates = template_dir()
    files = [(templates, p) for p in templates.rglob("*.j2")]
    for entry in RENDERER_CODE:
        path = package / entry
        files += [(package, p) for p in (path.rglob("*.py") if path.is_dir() else [path])]
    for root, path in sorted(files, key=lambda item: str(item[1])):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def render(program: Program, spec_path: str = "<spec>") -> Sources:
    env = environment(program.backend)
    context = {"program": program, "model": c_ident(program.name), "version": __version__,
               "spec_path": c_comment(spec_label(spec_path)), "abi": abi,
               "arguments": arguments.bind, "arguments_used": arguments.uses}
    header = env.get_template("model.h.j2").render(context)
    source = env.get_template("model.c.j2").render(context)
    return Sources(program.name, header, source, abi.cdef(program))

"""Program -> C sources, through the one Jinja environment.

Templates print and loop; every number, name and choice they use is a field of the IR.
Values reach C only through the filters below, which refuse anything that is not a
validated identifier, an int, or a finite float (written so it round-trips exactly).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import __version__
from .ir import Program

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_EXPR = re.compile(r"[A-Za-z0-9_ .+\-*/()<>=?:\[\]]*")  # kernel formulas written in layers/, never from a spec


def c_ident(value) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ValueError(f"not a valid C identifier: {value!r}")
    return value


def c_int(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 62:
        raise ValueError(f"not a valid C integer constant: {value!r}")
    return str(value)


def c_float(value) -> str:
    """A finite float as a C literal that parses back to the same double."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = repr(float(value))
    return text if any(ch in text for ch in ".e") else text + ".0"


def c_expr(value) -> str:
    if not isinstance(value, str) or not _EXPR.fullmatch(value):
        raise ValueError(f"not a kernel expression: {value!r}")
    return value


def c_comment(value) -> str:
    """Text inside a /* */ comment: nothing that could close it, splice a line (a backslash,
    or the trigraph ??/ that -std=c99 turns into one) or start a directive."""
    text = str(value)
    if "*/" in text or "/*" in text or "\\" in text or "??" in text or any(ord(ch) < 32 for ch in text):
        raise ValueError(f"unsafe text for a C comment: {value!r}")
    return text


def template_dir() -> Path:
    """templates/ in a source checkout, or the copy installed inside the package."""
    try:
        from importlib.resources import files

        installed = Path(str(files("cnncc.templates")))
        if (installed / "model.c.j2").is_file():
            return installed
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def environment() -> "jinja2.Environment":
    import jinja2  # here, not at the top: loading a cached model never renders

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails here, not as C far away
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
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


@lru_cache(maxsize=1)
def renderer_digest() -> str:
    """A hash of everything besides the program and the spec label that decides the rendered
    text: the templates and cnncc's own code (the build cache keys a program on it)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for root in (template_dir(), package):
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".j2", ".py") and p.is_file()):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def render(program: Program, spec_path: str = "<spec>") -> Sources:
    env = environment()
    context = {"program": program, "model": c_ident(program.name), "version": __version__,
               "spec_path": c_comment(spec_label(spec_path))}
    header = env.get_template("model.h.j2").render(context)
    source = env.get_template("model.c.j2").render(context)
    return Sources(program.name, header, source, header_to_cdef(header))


def header_to_cdef(header: str) -> str:
    """cffi's cdef takes declarations and integer #defines, not guards or includes."""
    keep = []
    for line in header.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.fullmatch(r"#define\s+\w+\s+\d+\s*(/\*.*\*/)?", stripped):
                keep.append(re.sub(r"/\*.*\*/", "", stripped))
            continue
        keep.append(line)
    return "\n".join(keep)

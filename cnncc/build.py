"""C sources -> a loaded native module, through a content-addressed cache.

The shared library is built by the C compiler directly (no shell) and loaded with cffi's
ABI mode (`ffi.dlopen`) against the model header. The cache key covers everything that
changes the machine code: the sources, the compiler and its version, the flags, the CPU
the code was tuned for (-march=native), and the cnncc version. A build happens in a
private temporary directory that is renamed into place only when complete, so a crash
or a race never leaves a half-written module for a later run to load, and two processes
building the same model both succeed.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import cffi

from .version import __version__
from . import abi
from .codegen import Sources, render, renderer_digest, spec_label
from .ir import Program
from .options import DEFAULT_CFLAGS, CompileOptions

REQUIRED_FLAGS = ("-std=c99", "-fPIC", "-shared")
WARNINGS = ("-Wall", "-Wextra")

compile_count = 0  # real compilations in this process (tests assert cache hits with it)
STALE_STAGING_SECONDS = 3600  # a build takes seconds: a staging directory this old was left by a killed one


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


@dataclass
class Module:
    ffi: cffi.FFI
    lib: Any
    path: Path
    from_cache: bool
    sources: Sources


def find_compiler(cc: str | None = None) -> str:
    for candidate in ([cc] if cc else [os.environ.get("CC"), "gcc", "cc", "clang"]):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise BuildError(
        "no C compiler found (looked for $CC, gcc, cc, clang). cnncc compiles the models it "
        "generates: install one, e.g. `apt-get install gcc` (Debian/Ubuntu), `xcode-select --install` "
        "(macOS), or set CC to your compiler.")


@lru_cache(maxsize=8)
def compiler_identity(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run the C compiler {compiler}: {exc}") from None


@lru_cache(maxsize=1)
def _cpu_identity() -> str:
    """-march=native tunes for this CPU, so a cache shared across machines must key on it."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
        return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:16]
    except OSError:
        return platform.processor() or platform.machine()


def default_build_dir() -> Path:
    return Path(os.environ.get("CNNCC_BUILD_DIR") or Path.cwd() / "build")


def _key(parts: tuple[str, ...], compiler: str, flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (*parts, compiler_identity(compiler), " ".join(flags), __version__, platform.machine(),
                 _cpu_identity()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def cache_key(sources: Sources, compiler: str, flags: tuple[str, ...]) -> str:
    """The key of rendered sources: their text, the compiler, the flags and the target."""
    return _key((sources.source, sources.header), compiler, flags)


def program_cache_key(program: Program, spec_path: str, compiler: str, flags: tuple[str, ...]) -> str:
    """The key of a program before rendering: the rendered text is a function of the program (its
    repr covers every field: frozen dataclasses, ints, exact float reprs), the spec's label and the
    renderer's code, so a cache hit needs no rendering at all."""
    return _key(("program", repr(program), spec_label(spec_path), renderer_digest()), compiler, flags)


def remove_stale_staging(root: Path, name: str) -> None:
    """A build killed before its rename leaves its private `.NAME-*` directory behind. Nothing
    ever loads one (only a completed rename makes a module visible); remove those over an hour old."""
    cutoff = time.time() - STALE_STAGING_SECONDS
    for path in root.glob(f".{name}-*"):
        try:
            if path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def build(sources: Sources, build_dir: str | os.PathLike | None = None,
          cflags: tuple[str, ...] | list[str] | None = None, cc: str | None = None) -> Module:
    """Compile (or find in the cache) and load a model's rendered sources."""
    compiler = find_compiler(cc)
    flags = tuple(DEFAULT_CFLAGS if cflags is None else cflags)
    return _build(sources.name, cache_key(sources, compiler, flags), lambda: sources, sources.cdef, build_dir,
                  compiler, flags)


def build_program(program: Program, spec_path: str = "<spec>", build_dir: str | os.PathLike | None = None,
                  options: CompileOptions | None = None) -> Module:
    """The same for a program, built as `options` say: rendered only when it is not in the cache."""
    options = options or CompileOptions()
    compiler = find_compiler(options.cc)
    flags = options.build_flags
    key = program_cache_key(program, spec_path, compiler, flags)
    return _build(program.name, key, lambda: render(program, spec_path), abi.cdef(program), build_dir, compiler,
                  flags)


def _build(name: str, key: str, make_sources: Callable[[], Sources], cdef: str, build_dir, compiler: str,
           flags: tuple[str, ...]) -> Module:
    global compile_count
    root = Path(build_dir) if build_dir is not None else default_build_dir()
    target = root / f"{name}-{key}"
    library = target / f"{name}.so"
    debug = os.environ.get("CNNCC_DEBUG")

    from_cache = library.is_file()
    if from_cache:
        # the very files the library was compiled from (a completed rename made them visible)
        header = (target / f"{name}.h").read_text()
        sources = Sources(name, header, (target / f"{name}.c").read_text(), cdef)
        if debug:
            print(f"cnncc: loading cached {library}", file=sys.stderr)
    else:
        sources = make_sources()
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root, sources.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{sources.name}-", dir=root))
        try:
            (staging / f"{sources.name}.c").write_text(sources.source)
            (staging / f"{sources.name}.h").write_text(sources.header)
            command = [compiler, *REQUIRED_FLAGS, *WARNINGS, *flags, "-o", str(staging / library.name),
                       str(staging / f"{sources.name}.c"), "-lm"]
            if debug:
                print(f"cnncc: compiling {target / (sources.name + '.c')}\ncnncc: {' '.join(command)}",
                      file=sys.stderr)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise BuildError(f"the C compiler failed on the generated code for '{sources.name}' "
                                 f"(this is a cnncc bug; please report it):\n{result.stderr[-4000:]}")
            compile_count += 1
            try:
                os.rename(staging, target)  # atomic: the directory appears complete or not at all
            except OSError:
                if not library.is_file():  # not a lost race: something else is wrong
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    # Never unloaded: an OpenMP build's worker threads (libgomp, loaded with it) outlive the
    # Python objects, and unloading their code at exit would crash the interpreter on its way out.
    lib = ffi.dlopen(str(library), ffi.RTLD_NOW | ffi.RTLD_NODELETE)
    return Module(ffi, lib, library, from_cache, sources)

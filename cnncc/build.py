"""C sources -> a loaded native module, through a content-addressed cache.

The shared library is built by the C compiler directly (no shell) and loaded with cffi's
ABI mode (`ffi.dlopen`) against the model header, whose declarations are parsed once, when the
entry is built: the entry keeps them as cffi's out-of-line module (NAME_ffi.py), so loading a
cached model neither imports the C parser nor parses (about 35 ms of a cached compile). The
cache key covers everything that changes the machine code: the sources, the compiler and its
version, the flags, the CPU the code was tuned for (-march=native), and the cnncc version. A
build happens in a private temporary directory that is renamed into place only when complete, so a crash
or a race never leaves a half-written module for a later run to load. Two processes that need
the same new model at once do not both compile it: the second waits on the entry's build lock and
loads the first one's module.
"""
from __future__ import annotations

import hashlib
import os
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import cffi

try:
    import fcntl
except ImportError:  # not POSIX: builds run unlocked (the install is atomic all the same)
    fcntl = None

from . import abi
from .codegen import Sources, render, renderer_digest, spec_label
from .ir import Program
from .options import DEFAULT_CFLAGS, CompileOptions
from .version import __version__

REQUIRED_FLAGS = ("-std=c99", "-fPIC", "-shared")
WARNINGS = ("-Wall", "-Wextra")

compile_count = 0  # real compilations in this process (tests assert cache hits with it)
MANIFEST = "MANIFEST.json"  # in a cache entry: each file's size and hash, written last
STALE_STAGING_SECONDS = 3600  # a build takes seconds: a staging directory this old was left by a killed one


class BuildError(RuntimeError):
    """The C compiler is missing or failed, or the build directory cannot be used."""


@dataclass
class Module:
    ffi: cffi.FFI
    lib: Any
    path: Path
    from_cache: bool
    sources: Sources


def compiler_command(cc: str | None = None) -> tuple[str, ...]:
    """The compiler as a command: `cc` (the argument) or else $CC, split as a shell would
    (CC="gcc -m32" keeps its -m32), its program made an absolute path; or, with neither set,
    the first of gcc, cc, clang on PATH. A compiler that was asked for and cannot be found is
    an error, never a silent fallback to another one."""
    chosen, origin = (cc, "the cc argument") if cc else (os.environ.get("CC"), "$CC")
    if chosen and chosen.strip():
        try:
            words = shlex.split(chosen)
        except ValueError as exc:
            raise BuildError(f"{origin} ({chosen!r}) cannot be split into a command: {exc}") from None
        program = shutil.which(words[0]) if words else None
        if program is None:
            raise BuildError(f"{origin} names the C compiler {words[0]!r}, which is not an executable "
                             "(nor found on PATH): fix it, or unset CC to use gcc, cc or clang")
        return (os.path.abspath(program), *words[1:])
    for candidate in ("gcc", "cc", "clang"):
        if shutil.which(candidate):
            return (os.path.abspath(shutil.which(candidate)),)
    raise BuildError(
        "no C compiler found (looked for $CC, gcc, cc, clang). cnncc compiles the models it "
        "generates: install one, e.g. `apt-get install gcc` (Debian/Ubuntu), `xcode-select --install` "
        "(macOS), or set CC to your compiler.")


def find_compiler(cc: str | None = None) -> str:
    """The compiler program's absolute path (compiler_command without its arguments)."""
    return compiler_command(cc)[0]


def compiler_identity(compiler: tuple[str, ...] | str) -> str:
    """The compiler's own account of itself (its --version), with the arguments it is run with."""
    return _compiler_identity((compiler,) if isinstance(compiler, str) else tuple(compiler))


@lru_cache(maxsize=8)
def _compiler_identity(compiler: tuple[str, ...]) -> str:
    try:
        result = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30)
        return " ".join(compiler[1:]) + "\n" + result.stdout.strip()
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


def _key(parts: tuple[str, ...], compiler: tuple[str, ...], flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (*parts, _compiler_identity(compiler), " ".join(flags), __version__, platform.machine(),
                 _cpu_identity()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def cache_key(sources: Sources, compiler: tuple[str, ...], flags: tuple[str, ...]) -> str:
    """The key of rendered sources: their text, the compiler, the flags and the target."""
    return _key((sources.source, sources.header), compiler, flags)


def program_cache_key(program: Program, spec_path: str, compiler: tuple[str, ...], flags: tuple[str, ...]) -> str:
    """The key of a program before rendering: the rendered text is a function of the program (its
    repr covers every field: frozen dataclasses, ints, exact float reprs), the spec's label and the
    renderer's code, so a cache hit needs no rendering at all. The optimizer enters as what its C
    depends on (OptimizerKind.compiled_identity): a new learning rate or momentum in the spec
    loads the same module instead of compiling identical C again."""
    optimizer = program.optimizer
    identity = None if optimizer is None else program.optimizer_rules.compiled_identity(optimizer.settings)
    compiled = replace(program, optimizer=None)
    return _key(("program", repr(compiled), repr(identity), spec_label(spec_path), renderer_digest()), compiler, flags)


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
    compiler = compiler_command(cc)
    flags = tuple(DEFAULT_CFLAGS if cflags is None else cflags)
    return _build(sources.name, cache_key(sources, compiler, flags), lambda: sources, sources.cdef, build_dir,
                  compiler, flags)


def build_program(program: Program, spec_path: str = "<spec>", build_dir: str | os.PathLike | None = None,
                  options: CompileOptions | None = None) -> Module:
    """The same for a program, built as `options` say: rendered only when it is not in the cache."""
    options = options or CompileOptions()
    compiler = compiler_command(options.cc)
    flags = options.build_flags
    key = program_cache_key(program, spec_path, compiler, flags)
    return _build(program.name, key, lambda: render(program, spec_path), abi.cdef(program), build_dir, compiler,
                  flags)


def _build(name: str, key: str, make_sources: Callable[[], Sources], cdef: str, build_dir,
           compiler: tuple[str, ...], flags: tuple[str, ...]) -> Module:
    """A cache entry is the directory NAME-KEY holding NAME.c, NAME.h, NAME.so, NAME_ffi.py (the
    parsed declarations) and, written last, MANIFEST (each file's size and SHA-256). An entry whose
    manifest is missing or disagrees with its files (a deleted or truncated library, a missing
    header, forged declarations) is rebuilt and replaced atomically; every other problem is a
    BuildError saying what is wrong."""
    root = Path(os.path.abspath(build_dir if build_dir is not None else default_build_dir()))
    target = root / f"{name}-{key}"
    library = target / f"{name}.so"
    debug = os.environ.get("CNNCC_DEBUG")

    sources = _verified_entry(target, name, cdef)
    from_cache = sources is not None
    if not from_cache:
        fresh = make_sources()  # first: whatever rendering refuses, it refuses before anything is written
        with _entry_lock(root, target):  # another process building this entry: wait, then load its build
            sources = _verified_entry(target, name, cdef)
            from_cache = sources is not None
            if not from_cache:
                sources = fresh
                _compile_entry(root, target, sources, compiler, flags, debug)
    if from_cache and debug:
        print(f"cnncc: loading cached {library}", file=sys.stderr)

    ffi = _load_ffi(target / f"{name}_ffi.py")
    # Never unloaded: an OpenMP build's worker threads (libgomp, loaded with it) outlive the
    # Python objects, and unloading their code at exit would crash the interpreter on its way out.
    try:
        lib = ffi.dlopen(str(library), ffi.RTLD_NOW | ffi.RTLD_NODELETE)
    except OSError as exc:
        raise BuildError(f"the compiled model {library} cannot be loaded: {exc}") from None
    return Module(ffi, lib, library, from_cache, sources)


def _load_ffi(path: Path):
    """The entry's cffi declarations, from its out-of-line module: Python that cffi generated from the
    header when the entry was built (a call of _cffi_backend.FFI with the parsed types), checked against
    the manifest with the rest of the entry."""
    namespace: dict = {"__name__": f"_cnncc_ffi_{path.stem}"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - our own generated, verified file
    return namespace["ffi"]


def _write_ffi(path: Path, name: str, cdef: str) -> None:
    """cffi's out-of-line ABI module of the declarations: parsed now, so that loading needs no parser."""
    builder = cffi.FFI()
    builder.cdef(cdef)
    builder.set_source(f"_cnncc_ffi_{name}", None, compiler_verbose=False)
    builder.emit_python_code(str(path))


@contextmanager
def _entry_lock(root: Path, target: Path):
    """Hold the entry's build lock (an advisory lock on `.NAME-KEY.lock` beside it) while it is built.
    Without it, processes that need the same new model at once (parallel test workers, jobs on one
    cache) would each compile it and all but one throw the work away. The holder deletes the lock
    file before releasing it, so a waiter that then wins a deleted file's lock tries again on the
    path's current file; a killed holder releases the lock with its exit. The lock only saves work:
    the install stays atomic without it, so where there is no flock (or the directory cannot hold
    the lock file) the build goes ahead unlocked."""
    if fcntl is None:
        yield
        return
    _make_root(root)
    path = root / f".{target.name}.lock"
    while True:
        try:
            lock = open(path, "a")
        except OSError:
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break  # the lock of the file still at the path
        except FileNotFoundError:
            pass  # deleted by the holder we waited for: lock the path's next file
        lock.close()
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        lock.close()  # releases the lock


def _make_root(root: Path) -> None:
    """Create the (absolute: nothing handed to the compiler can start with '-') build directory
    when a build needs it; a path that exists and is not a directory is a BuildError."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BuildError(f"the build directory {root} exists and is not a directory: "
                         "remove it or choose another build_dir") from None
    except OSError as exc:
        raise BuildError(f"cannot create the build directory {root}: {exc.strerror}") from None
    if not root.is_dir():
        raise BuildError(f"the build directory {root} exists and is not a directory: "
                         "remove it or choose another build_dir")


def _file_digest(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _entry_files(name: str) -> tuple[str, ...]:
    return f"{name}.c", f"{name}.h", f"{name}.so", f"{name}_ffi.py"


def _verified_entry(target: Path, name: str, cdef: str) -> Sources | None:
    """The sources of a complete cache entry, or None when there is no entry or it is damaged."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        files = _entry_files(name)
        if not isinstance(manifest, dict) or sorted(manifest) != sorted(files):
            return None
        for file in files:
            if _file_digest(target / file) != manifest[file]:
                return None
        header = (target / f"{name}.h").read_text()
        return Sources(name, header, (target / f"{name}.c").read_text(), cdef)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _compile_entry(root: Path, target: Path, sources: Sources, compiler: tuple[str, ...],
                   flags: tuple[str, ...], debug) -> None:
    global compile_count
    name = sources.name
    _make_root(root)
    remove_stale_staging(root, name)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError as exc:
        raise BuildError(f"cannot write in the build directory {root}: {exc.strerror}") from None
    try:
        (staging / f"{name}.c").write_text(sources.source)
        (staging / f"{name}.h").write_text(sources.header)
        output = staging / f"{name}.so"
        command = [*compiler, *REQUIRED_FLAGS, *WARNINGS, *flags, "-o", str(output), str(staging / f"{name}.c"),
                   "-lm"]
        if debug:
            print(f"cnncc: compiling {target / (name + '.c')}\ncnncc: {' '.join(command)}", file=sys.stderr)
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            raise BuildError(f"cannot run the C compiler {compiler[0]}: {exc.strerror}") from None
        if result.returncode != 0:
            raise BuildError(f"the C compiler failed on the generated code for '{name}' "
                             f"(this is a cnncc bug; please report it):\n{result.stderr[-4000:]}")
        if not output.is_file() or output.stat().st_size == 0:
            raise BuildError(f"the C compiler {' '.join(compiler)} exited successfully but wrote no library "
                             f"{output.name}: is $CC really a C compiler?")
        compile_count += 1
        _write_ffi(staging / f"{name}_ffi.py", name, sources.cdef)
        manifest = {file: _file_digest(staging / file) for file in _entry_files(name)}
        (staging / MANIFEST).write_text(json.dumps(manifest))  # last: an entry with it is complete
        _install(staging, target, name, sources.cdef)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(staging: Path, target: Path, name: str, cdef: str) -> None:
    """Rename the staging directory into place: atomic, so the entry appears complete or not at
    all. A damaged entry in the way is first renamed aside (also atomic), then removed; losing a
    race to another process that installed a good entry meanwhile is fine."""
    for _ in range(3):
        try:
            os.rename(staging, target)
            return
        except OSError:
            if _verified_entry(target, name, cdef) is not None:
                return  # another process won the race with a complete entry
        aside = Path(tempfile.mkdtemp(prefix=f".{name}-damaged-", dir=target.parent))
        try:
            os.rename(target, aside / "entry")
        except FileNotFoundError:
            pass  # removed meanwhile: try again
        except OSError as exc:
            raise BuildError(f"the damaged cache entry {target} cannot be replaced: {exc.strerror}; "
                             "delete it by hand") from None
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise BuildError(f"cannot install the cache entry {target}: it keeps being replaced by another process")

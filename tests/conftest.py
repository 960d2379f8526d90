"""Shared test setup: `import reference` / `import seed_examples` from tests/, and one compile
cache for the whole session (every spec compiles once, however many tests use it)."""
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    """A build directory shared by the session, and by every pytest-xdist worker of it (their
    base temporaries share a parent): identical specs compile once. The cache is safe to share:
    a build appears by an atomic rename, and a lost race loads the winner's module."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "cnncc-build"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def once_per_session(build_dir):
    """once_per_session(name, compute): compute()'s JSON-able result, computed by one process of
    the session and read by the others. A module fixture runs once per pytest-xdist worker that
    gets any of the module's tests; for an expensive one with a directory of its own (nothing the
    build cache could share) that doubles the work. A lock in the directory the workers share
    makes the second worker wait for the first one's result instead (its cores are busy with that
    work meanwhile). pytest-xdist's own --dist loadgroup cannot do this here: with pytest 9 its
    group marks never reach the scheduler."""
    import fcntl
    import json

    root = build_dir.parent

    def run(name, compute):
        result_path = root / f"{name}.json"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if result_path.exists():
                return json.loads(result_path.read_text())
            result = compute()
            staging = result_path.with_suffix(".partial")
            staging.write_text(json.dumps(result))
            staging.replace(result_path)
            return result

    return run


@pytest.fixture(scope="session")
def compile_many(build_dir):
    """compile_many(specs, cflags=None, backend="vector"): compile specs into the shared cache in
    parallel (the C compiler runs as a subprocess, so threads overlap). Later cnncc.compile calls
    of the same specs load from the cache; a build error surfaces here."""
    from concurrent.futures import ThreadPoolExecutor

    import cnncc

    def run(specs, cflags=None, backend="vector"):
        options = {"backend": backend} | ({} if cflags is None else {"cflags": tuple(cflags)})
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(cnncc.compile, spec, build_dir=build_dir, **options) for spec in specs]
            return [future.result() for future in futures]

    return run


def defined_macros(text: str) -> list[str]:
    """Every macro a C text #defines, once per #if/#elif/#else chain: the alternatives of one
    chain (e.g. per-target settings) define the same name, and only one of them is compiled."""
    import re

    found: list[str] = []
    chains: list[list[set[str]]] = []  # open #if chains: the names of each branch so far
    for line in text.splitlines():
        directive = re.match(r"\s*#\s*(\w+)\s*(\w*)", line)
        if not directive:
            continue
        word, name = directive.groups()
        if word in ("if", "ifdef", "ifndef"):
            chains.append([set()])
        elif word in ("elif", "else") and chains:
            chains[-1].append(set())
        elif word == "endif" and chains:
            names = set().union(*chains.pop())
            (chains[-1][-1].update(names) if chains else found.extend(sorted(names)))
        elif word == "define":
            (chains[-1][-1].add(name) if chains else found.append(name))
    return found

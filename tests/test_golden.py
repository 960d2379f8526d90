"""Golden snapshots of the generated C: NAME.h and NAME.c of every spec in specs/, as the Python
module builds them (one thread) and as `cnncc emit --inference-only` writes them, under
tests/golden/<spec>/{module,inference}/. Any change to the generated code fails here until the
snapshots are refreshed, so it shows up in review as a diff of the C. Refresh them with

    CNNCC_REFRESH_GOLDEN=1 python -m pytest tests/test_golden.py

(tests/golden/digests.json, the training digests of test_digests.py, is not touched.) The cnncc
version in the files' first comment is stored as <version>, so a release changes nothing here.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import cnncc
from cnncc import codegen
from cnncc.emit import emit
from cnncc.version import __version__

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
REFRESH = os.environ.get("CNNCC_REFRESH_GOLDEN") == "1"


def _rendered(path: Path, build: str, tmp_path: Path) -> dict[str, str]:
    if build == "module":
        program = cnncc.check(path).program
        sources = codegen.render(program, str(path))
        texts = {f"{program.name}.h": sources.header, f"{program.name}.c": sources.source}
    else:
        emitted = emit(path, tmp_path, inference_only=True)
        name = emitted.program.name
        texts = {f"{name}.{ext}": (tmp_path / f"{name}.{ext}").read_text() for ext in ("h", "c")}
    return {file: text.replace(f"cnncc {__version__}", "cnncc <version>") for file, text in texts.items()}


@pytest.mark.parametrize("build", ["module", "inference"])
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_generated_c_matches_its_snapshot(path, build, tmp_path):
    folder = GOLDEN / path.stem / build
    texts = _rendered(path, build, tmp_path)
    if REFRESH:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in folder.iterdir()) - set(texts):
            (folder / stale).unlink()
        for file, text in texts.items():
            (folder / file).write_text(text)
    stored = {p.name: p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}
    assert stored.keys() == texts.keys(), f"no snapshot in {folder}: refresh with CNNCC_REFRESH_GOLDEN=1"
    for file, text in texts.items():
        assert text == stored[file], (f"{folder / file} differs from the generated C: review the change, then "
                                      "refresh with CNNCC_REFRESH_GOLDEN=1 python -m pytest tests/test_golden.py")


def test_every_snapshot_belongs_to_a_spec():
    folders = {p.name for p in GOLDEN.iterdir() if p.is_dir()}
    assert folders <= {p.stem for p in SPECS}, f"snapshots of removed specs: {folders - {p.stem for p in SPECS}}"

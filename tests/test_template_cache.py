"""The compiled-template cache (cnncc/template_cache.py): the same C with it, without it, and
from entries that are torn or garbage; never a folder another user could write code into; and
nothing a user sees when the cache cannot be written."""
from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

import cnncc
from cnncc import codegen
from cnncc.template_cache import cache_root, template_code_cache

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "resnet_small.yaml"


def fresh_render(program, monkeypatch, cache):
    """Render in a new environment (as a new process would) with CNNCC_TEMPLATE_CACHE=cache."""
    monkeypatch.setenv("CNNCC_TEMPLATE_CACHE", str(cache))
    codegen.environment.cache_clear()
    try:
        return codegen.render(program).source
    finally:
        codegen.environment.cache_clear()


@pytest.fixture(scope="module")
def program():
    return cnncc.check(SPEC).program


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.code"))


def test_cached_code_renders_the_same_c(program, monkeypatch, tmp_path):
    uncached = fresh_render(program, monkeypatch, "off")
    cache = tmp_path / "cache"
    assert fresh_render(program, monkeypatch, cache) == uncached
    written = entries(cache)
    assert len(written) >= 10  # model.c.j2, its macros and every layer template it includes
    stamps = {path: path.stat().st_mtime_ns for path in written}
    assert fresh_render(program, monkeypatch, cache) == uncached  # read back: nothing written again
    assert {path: path.stat().st_mtime_ns for path in entries(cache)} == stamps
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


@pytest.mark.parametrize("damage", ["garbage", "torn", "empty"])
def test_damaged_entries_are_compiled_again(program, monkeypatch, tmp_path, damage):
    cache = tmp_path / "cache"
    expected = fresh_render(program, monkeypatch, cache)
    for path in entries(cache):
        data = path.read_bytes()
        garbage = random.Random(path.name).randbytes(len(data))
        path.write_bytes({"garbage": garbage, "torn": data[: len(data) // 2], "empty": b""}[damage])
    assert fresh_render(program, monkeypatch, cache) == expected
    # and the damaged entries were replaced by whole ones
    assert fresh_render(program, monkeypatch, "off") == expected
    assert all(path.stat().st_size > 100 for path in entries(cache))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_folder_others_can_write_to_is_not_used(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("CNNCC_TEMPLATE_CACHE", str(shared))
    assert template_code_cache({"trim_blocks": True}) is None
    shared.chmod(0o700)
    assert template_code_cache({"trim_blocks": True}) is not None
    # one folder per set of environment options: Jinja's key does not include them
    assert template_code_cache({"trim_blocks": True}).folder != template_code_cache({"trim_blocks": False}).folder


def test_a_cache_that_cannot_be_written_renders_without_it(program, monkeypatch, tmp_path):
    """A full disk or a read-only folder (simulated: root may write anywhere): no entry, same C."""
    import cnncc.template_cache as template_cache

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    expected = fresh_render(program, monkeypatch, "off")
    monkeypatch.setattr(template_cache.tempfile, "mkstemp", refuse)
    cache = tmp_path / "cache"
    assert fresh_render(program, monkeypatch, cache) == expected
    assert entries(cache) == [] and list(cache.glob("*/*.tmp")) == []


def test_a_file_where_the_folder_should_be_renders_without_it(program, monkeypatch, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    expected = fresh_render(program, monkeypatch, "off")
    assert fresh_render(program, monkeypatch, blocker) == expected
    assert fresh_render(program, monkeypatch, blocker / "below") == expected
    assert blocker.read_text() == "not a folder"


def test_where_the_cache_goes(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCC_TEMPLATE_CACHE", "OFF")
    assert cache_root() is None
    monkeypatch.setenv("CNNCC_TEMPLATE_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("CNNCC_TEMPLATE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "cnncc" / "templates"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "cnncc" / "templates"

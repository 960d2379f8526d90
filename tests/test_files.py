"""Every writer refuses a target that is not a regular file and writes through symlinks.

The writers: Model.save (and fit's checkpoints, which call it), cnncc emit's files and the
MNIST download cache. Each is pointed at a character device (a mknod copy of /dev/null,
as root only), a FIFO, a directory and a symlink; the node must survive untouched, and a
symlink must still be a symlink whose target holds the new contents.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.checkpoint import CheckpointError
from cnncc.emit import emit as emit_files
from cnncc.data import MNIST_MD5, DataError, download_mnist
from cnncc.files import FileReadError, FileWriteError, open_regular, write_bytes_atomically

TINY = {"name": "files_tiny", "input": {"channels": 1, "length": 4},
        "layers": [{"type": "flatten"}, {"name": "out", "type": "dense", "units": 2}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.1}}
KINDS = ["device", "fifo", "directory"]


def _make(kind: str, path: Path) -> None:
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


def _same_node(path: Path, kind: str) -> bool:
    mode = os.lstat(path).st_mode
    return {"device": stat.S_ISCHR, "fifo": stat.S_ISFIFO, "directory": stat.S_ISDIR}[kind](mode)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return cnncc.compile(TINY, build_dir=tmp_path_factory.mktemp("build"), cflags=("-O0",))


def _writers(model, tmp_path):
    """name -> write(path) for every writer, each raising on refusal."""
    payload = b"mnist bytes"
    name = next(iter(MNIST_MD5))

    def mnist(path: Path):
        if path.name != name:
            raise AssertionError("the MNIST writer needs the file's own name")
        fetched = {name: payload}
        download_mnist(path.parent, base_url="x/", fetch=lambda url: fetched[url[2:]])

    def emit(path: Path):
        emit_files(TINY, path.parent)

    return {"save": (model.save, "weights.npz"), "emit": (emit, "files_tiny.c"), "mnist": (mnist, name)}


@pytest.mark.parametrize("writer", ["save", "emit", "mnist"])
@pytest.mark.parametrize("kind", KINDS)
def test_writers_refuse_a_non_regular_target_and_leave_it(model, tmp_path, writer, kind, monkeypatch):
    write, name = _writers(model, tmp_path)[writer]
    if writer == "mnist":
        monkeypatch.setattr("cnncc.data.MNIST_MD5", {name: hashlib.md5(b"mnist bytes").hexdigest()})
    target = tmp_path / name
    _make(kind, target)
    with pytest.raises((FileWriteError, CheckpointError, DataError), match="regular file|not generated"):
        write(target)
    assert _same_node(target, kind)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


@pytest.mark.parametrize("writer", ["save", "emit", "mnist"])
def test_writers_write_through_a_symlink(model, tmp_path, writer, monkeypatch):
    write, name = _writers(model, tmp_path)[writer]
    if writer == "mnist":
        monkeypatch.setattr("cnncc.data.MNIST_MD5", {name: hashlib.md5(b"mnist bytes").hexdigest()})
    real = tmp_path / "elsewhere" / name
    real.parent.mkdir()
    link = tmp_path / "out" / name
    link.parent.mkdir()
    link.symlink_to(real)  # dangling: writing creates the target
    write(link)
    assert link.is_symlink() and real.is_file() and real.stat().st_size > 0
    first = real.read_bytes()
    if writer == "save":
        model.load(link)
    write(link)  # and again, replacing the target atomically
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == first or writer == "save"


@pytest.mark.parametrize("kind", KINDS)
def test_a_symlink_to_a_non_regular_file_is_refused(model, tmp_path, kind):
    node = tmp_path / "node"
    _make(kind, node)
    link = tmp_path / "weights.npz"
    link.symlink_to(node)
    with pytest.raises(CheckpointError, match="a link to"):
        model.save(link)
    assert link.is_symlink() and _same_node(node, kind)


def test_the_helper_replaces_a_regular_file_atomically(tmp_path):
    target = tmp_path / "a"
    target.write_bytes(b"old")
    write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("kind", KINDS + ["dev-zero"])
def test_readers_refuse_non_regular_files_without_blocking(model, tmp_path, kind):
    """A FIFO with no writer, a device, a link to /dev/zero: refused at once, never read."""
    path = tmp_path / "weights.npz"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        _make(kind, path)
    with pytest.raises(FileReadError, match="not a regular file"):
        open_regular(path, 1 << 20)
    before = model._params.copy()
    with pytest.raises(CheckpointError, match="not a regular file"):
        model.load(path)
    assert np.array_equal(model._params, before)


def test_readers_refuse_a_file_over_the_bound(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"\0" * 4097)
    with pytest.raises(FileReadError, match="more than the limit"):
        open_regular(path, 4096)


def test_emit_never_overwrites_a_file_it_did_not_generate(tmp_path, capsys):
    from cnncc.cli import main as cli_main

    out = tmp_path / "out"
    out.mkdir()
    mine = {"README.md": "# my project\n", "Makefile": "all:\n\techo mine\n", "main.c": "int main(void) { return 0; }\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(FileWriteError, match="not generated by cnncc.*--force"):
        emit_files(TINY, out)
    assert {name: (out / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)  # nothing written at all
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(TINY))
    assert cli_main(["emit", str(spec), "-o", str(out)]) != 0
    assert "--force" in capsys.readouterr().err
    assert {name: (out / name).read_text() for name in mine} == mine
    # its own files it replaces freely; --force replaces the user's too
    (out / "README.md").unlink()
    (out / "Makefile").unlink()
    emit_files(TINY, tmp_path / "fresh")
    assert cli_main(["emit", str(spec), "-o", str(out), "--force"]) == 0
    assert "generated by cnncc" in (out / "main.c").read_text()
    assert cli_main(["emit", str(spec), "-o", str(out)]) == 0  # again: all files are its own now

"""Every file cnncc writes or reads back goes through here: atomic writes, bounded reads.

A write goes to a temporary file in the target's directory, is fsynced and renamed over
the target, so a crash leaves the old file or the new one, never half of one. Renaming
replaces whatever the name pointed at, so the target is checked first:

- a target that exists and is not a regular file (a device, a FIFO, a socket, a
  directory) is refused with FileWriteError: `save("/dev/null")` must not replace the
  machine's /dev/null with a regular file;
- a symlink is written through: the file it points at is replaced atomically and the
  link stays (a dangling link creates its target); the same check applies to what the
  link points at, so a link to /dev/null is refused like /dev/null itself.

A read opens the file without blocking (a FIFO cannot hang it), then refuses anything that
is not a regular file or is larger than the caller's bound, before reading a byte.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class FileWriteError(OSError):
    """A target cnncc refuses to write (not a regular file)."""


class FileReadError(OSError):
    """A file cnncc refuses to read (missing, not a regular file, or too large)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def writable_target(path) -> Path:
    """The path a write to `path` replaces (symlinks followed), refusing a non-regular one."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write there: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        shown = f"{path} (a link to {target})" if target != path else str(path)
        raise FileWriteError(f"{shown} is {_kind(mode)}; cnncc writes only regular files "
                             "and will not replace it: choose a file path")
    return target


def write_atomically(path, write: Callable[[BinaryIO], None], make_parents: bool = False) -> Path:
    """Write `path` through `write(handle)` atomically (see the module docstring); returns the
    file actually replaced (a symlink's target)."""
    return write_together({path: write}, make_parents)[0]


def write_together(writers: dict, make_parents: bool = False) -> list[Path]:
    """Write several files, each through its `write(handle)`, so that none is replaced unless all
    were written completely (a failure in any leaves every target as it was); returns the files
    replaced, in order."""
    targets = [writable_target(path) for path in writers]
    staged: list[Path] = []
    try:
        for target, write in zip(targets, writers.values()):
            staged.append(_stage(target, write, make_parents))
        for target, temporary in zip(targets, staged):
            writable_target(target)  # checked again just before the rename: nothing swapped in meanwhile
            os.replace(temporary, target)
    except BaseException:
        for temporary in staged:
            temporary.unlink(missing_ok=True)
        raise
    for directory in {target.parent for target in targets}:
        _fsync_directory(directory)
    return targets


def _stage(target: Path, write: Callable[[BinaryIO], None], make_parents: bool) -> Path:
    """A complete, durable temporary copy of the new `target`, beside it."""
    directory = target.parent
    if make_parents:
        directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # A temporary file is private (0600); the result is an ordinary file, as open() would make it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name)


def write_bytes_atomically(path, data: bytes, make_parents: bool = False) -> Path:
    return write_atomically(path, lambda handle: handle.write(data), make_parents)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_regular(path, max_bytes: int) -> BinaryIO:
    """A binary handle on a regular file of at most max_bytes, or FileReadError saying why not.
    O_NONBLOCK: opening a FIFO returns at once (then is refused) instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise FileReadError(f"{path}: cannot open it: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileReadError(f"{path} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileReadError(f"{path} is {info.st_size:,} bytes, more than the limit of {max_bytes:,}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

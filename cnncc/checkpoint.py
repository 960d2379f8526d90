"""Weights and checkpoints: .npz files written atomically, validated completely on load.

A file holds every parameter under its `Model.params` key, the optimizer state, the step
count and metadata (format, spec name and fingerprint, dtype, epoch). `save` writes a
temporary file in the same directory, fsyncs it and renames it over the target, so a
crash or a kill leaves either the old file or the new one, never half of one. `load`
checks everything before it copies anything, so a bad file leaves the model untouched.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "cnncc-weights-1"
META_KEY = "__cnncc_meta__"
STATE_KEY = "__optimizer_state__"


class CheckpointError(ValueError):
    """A weights file that cannot be loaded into this model."""


def save(model, path, epoch: int | None = None) -> None:
    _write(path, model.spec, model.params, model.flat_optimizer_state, model.step_count, epoch)


def save_params(path, spec, params: dict[str, np.ndarray]) -> None:
    """A weights file for `spec` without a compiled model (e.g. weights imported from ONNX): the
    parameters keyed like Model.params, no optimizer state (Model.load starts it afresh)."""
    _write(path, spec, params, None, 0, None)


def _write(path, spec, params, optimizer_state, step: int, epoch: int | None) -> None:
    path = Path(path)
    meta = {"format": FORMAT, "spec": spec.name, "fingerprint": spec.fingerprint(),
            "dtype": spec.dtype, "step": step, "epoch": epoch, "optimizer": spec.optimizer.type}
    arrays = {key: np.asarray(value) for key, value in params.items()}
    if optimizer_state is not None:
        arrays[STATE_KEY] = optimizer_state
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
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


def _check_declared_sizes(path, max_elements: int) -> None:
    """Refuse arrays larger than the model could hold before reading them, so a small file
    declaring a huge array (or a zip bomb) fails cleanly instead of exhausting memory."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > 128 + max_elements * 8:
                raise CheckpointError(f"{path}: member '{info.filename}' expands to {info.file_size:,} bytes, "
                                      "more than this model's parameters could need")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(member, max_header_size=1 << 16)
            elements = int(np.prod(shape, dtype=object)) if shape else 1
            if elements > max_elements:
                raise CheckpointError(f"{path}: array '{info.filename[:-4]}' declares {elements:,} elements, "
                                      f"more than a model of this size could hold")


def read(path, max_elements: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a weights file, or CheckpointError saying what is wrong.
    With max_elements, arrays declaring more elements are refused before any is read."""
    try:
        if max_elements is not None:
            _check_declared_sizes(path, max_elements)
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weights file") from None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable weights file (corrupt or truncated?): {exc}") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a cnncc weights file (no metadata)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta, arrays


@dataclass(frozen=True)
class LoadReport:
    """What load(path, strict=False) did: parameters copied, and those left as they were, with why."""
    loaded: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (this model's key, why it was not loaded)
    unused: tuple[str, ...]  # parameters in the file that this model has no place for

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} parameter(s): {', '.join(self.loaded) or 'none'}"]
        lines += [f"skipped {key}: {why}" for key, why in self.skipped]
        if self.unused:
            lines.append(f"not used from the file: {', '.join(self.unused)}")
        return "\n".join(lines)


def _read_for(model, path):
    # Generous (a file from another spec should reach the clearer fingerprint error below),
    # but bounded by this model's size, so a forged header cannot exhaust memory.
    largest = max([array.size for array in model.params.values()] + [model.flat_optimizer_state.size])
    return read(path, max_elements=16 * largest + (1 << 20))


def load_matching(model, path) -> LoadReport:
    """Transfer learning: copy every parameter whose key (layer name and parameter) and shape
    match, from a file saved by any spec; leave the others as they are. The optimizer state
    and step start afresh (they belong to the other training run). Everything is checked
    before anything is copied."""
    meta, arrays = _read_for(model, path)
    loaded, skipped, values = [], [], {}
    for key, target in model.params.items():
        array = arrays.get(key)
        if array is None:
            skipped.append((key, "not in the file"))
        elif array.shape != target.shape or array.dtype.kind != "f":
            skipped.append((key, f"the file has {array.dtype} {array.shape}, this model {target.shape}"))
        else:
            converted = array.astype(model.dtype)
            if not np.isfinite(converted).all():
                raise CheckpointError(f"{path}: parameter '{key}' contains NaN or infinite values "
                                      f"(in {model.dtype})")
            values[key] = converted
            loaded.append(key)
    if not loaded:
        raise CheckpointError(f"{path}: no parameter of this model ({', '.join(model.params)}) matches one in the "
                              f"file by name and shape (the file's: "
                              f"{', '.join(k for k in arrays if k != STATE_KEY) or 'none'})")
    for key, array in values.items():
        model.params[key][...] = array
    model.flat_optimizer_state[...] = 0
    model.step_count = 0
    unused = tuple(k for k in arrays if k != STATE_KEY and k not in model.params)
    return LoadReport(tuple(loaded), tuple(skipped), unused)


def load(model, path) -> int | None:
    """Validate the whole file, then copy it into the model; returns the saved epoch."""
    meta, arrays = _read_for(model, path)
    saved = meta.get("fingerprint")
    renamed = isinstance(meta.get("spec"), str) and saved == model.spec.fingerprint(name=meta["spec"])
    if saved != model.spec.fingerprint() and not renamed:
        raise CheckpointError(
            f"{path}: saved from spec '{meta.get('spec')}' (fingerprint {meta.get('fingerprint')}), "
            f"which differs from this model's spec '{model.spec.name}' ({model.spec.fingerprint()}): "
            "the layers, shapes or names do not match; load(path, strict=False) copies the layers whose "
            "names and shapes match")
    values = {}
    for key, target in model.params.items():
        if key not in arrays:
            raise CheckpointError(f"{path}: missing parameter '{key}'")
        array = arrays[key]
        if array.shape != target.shape or array.dtype.kind != "f":
            raise CheckpointError(f"{path}: parameter '{key}' is {array.dtype} {array.shape}, "
                                  f"expected floats of shape {target.shape}")
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: parameter '{key}' contains NaN or infinite values")
        values[key] = array
    state = arrays.get(STATE_KEY)
    if state is not None and state.shape != model.flat_optimizer_state.shape:
        state = None  # another optimizer: start its state afresh, the weights are still good
    if state is not None and not np.isfinite(state).all():
        raise CheckpointError(f"{path}: optimizer state contains NaN or infinite values")
    for key, array in values.items():
        model.params[key][...] = array
    if state is not None:
        model.flat_optimizer_state[...] = state
        model.step_count = int(meta.get("step") or 0)
    else:
        model.flat_optimizer_state[...] = 0
        model.step_count = 0
    return meta.get("epoch")

"""Weights and checkpoints: .npz files written atomically, validated completely on load.

A file holds every parameter under its `Model.params` key, the optimizer state, the step
count and metadata (format, spec name and fingerprint, dtype, epoch). `save` refuses
non-finite values (a good file is never replaced by a bad one) and writes through
`files.write_atomically`: a crash or a kill leaves either the old file or the new one,
and a target that is not a regular file is refused. `load` reads only a regular file of
a bounded size, then checks every field (types, ranges, dtypes, finiteness after
conversion to the model's dtype) before it copies anything, so a bad file leaves the
model untouched.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import FileReadError, FileWriteError, open_regular, write_atomically

FORMAT = "cnncc-weights-1"
META_KEY = "__cnncc_meta__"
STATE_KEY = "__optimizer_state__"
MAX_META_BYTES = 4096  # the metadata cnncc writes is ~250 bytes of flat JSON
MAX_COUNT = 2**31 - 1  # step and epoch: the C side's `long step` is 32 bits on some platforms
META_FIELDS = {"format": str, "spec": str, "fingerprint": str, "dtype": str, "step": int, "epoch": int,
               "optimizer": str}


class CheckpointError(ValueError):
    """A weights file that cannot be loaded into this model, or a model that cannot be saved."""


def _finite_or_refuse(what: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise CheckpointError(f"{what} contains NaN or infinite values; nothing was written, "
                              "so an earlier good file stays as it was")


def save(model, path, epoch: int | None = None) -> None:
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_COUNT):
        raise ValueError(f"epoch must be None or an integer in [0, {MAX_COUNT}], got {epoch!r}")
    _write(path, model.spec, model.params, model.flat_optimizer_state, model.step_count, epoch)


def params_writer(path, spec, params: dict[str, np.ndarray]):
    """A weights file for `spec` without a compiled model (e.g. weights imported from ONNX), as a
    `write(handle)` for files.write_together, so it can be written with the spec, all or nothing:
    the parameters keyed like Model.params, no optimizer state (Model.load starts it afresh)."""
    arrays = _arrays(path, spec, params, None, 0, None)
    return lambda handle: np.savez(handle, **arrays)


def _write(path, spec, params, optimizer_state, step: int, epoch: int | None) -> None:
    arrays = _arrays(path, spec, params, optimizer_state, step, epoch)
    try:
        write_atomically(path, lambda handle: np.savez(handle, **arrays), make_parents=True)
    except FileWriteError as exc:
        raise CheckpointError(str(exc)) from None


def _arrays(path, spec, params, optimizer_state, step: int, epoch: int | None) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint file, every one checked finite, the metadata among them."""
    meta = {"format": FORMAT, "spec": spec.name, "fingerprint": spec.fingerprint(),
            "dtype": spec.dtype, "step": step, "epoch": epoch, "optimizer": spec.optimizer.type}
    arrays = {key: np.asarray(value) for key, value in params.items()}
    for key, array in arrays.items():
        _finite_or_refuse(f"cannot save to {path}: parameter '{key}'", array)
    if optimizer_state is not None:
        _finite_or_refuse(f"cannot save to {path}: the optimizer state", optimizer_state)
        arrays[STATE_KEY] = optimizer_state
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def _check_declared_sizes(handle, path, max_elements: int) -> None:
    """Refuse arrays larger than the model could hold before reading them, so a small file
    declaring a huge array (or a zip bomb) fails cleanly instead of exhausting memory."""
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            if info.file_size > 128 + max_elements * 16:
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
    handle.seek(0)


def read(path, max_elements: int = 1 << 28) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a weights file, or CheckpointError saying what is wrong. Only a
    regular file is read, of at most about 16 bytes per allowed element (longdouble), and
    arrays declaring more than max_elements are refused before any is read."""
    try:
        with open_regular(path, max_bytes=(1 << 20) + 16 * max_elements) as handle:
            _check_declared_sizes(handle, path, max_elements)
            with np.load(handle, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
    except FileReadError as exc:
        raise CheckpointError(f"weights file {exc}") from None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable weights file (corrupt or truncated?): {exc}") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a cnncc weights file (no metadata)")
    return _metadata(path, arrays.pop(META_KEY)), arrays


def _metadata(path, raw: np.ndarray) -> dict:
    """The metadata, every field checked: a flat JSON object of known keys and types."""
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: corrupt metadata (expected at most {MAX_META_BYTES} bytes of JSON)")
    try:
        meta = json.loads(raw.tobytes().decode(), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt metadata (not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        shown = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: unknown format {str(shown)[:40]!r}, expected {FORMAT!r}")
    for key, value in meta.items():
        kind = META_FIELDS.get(key)
        if kind is None:
            raise CheckpointError(f"{path}: unknown metadata field {key[:40]!r}; "
                                  f"known fields: {', '.join(META_FIELDS)}")
        if key == "epoch" and value is None:
            continue
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise CheckpointError(f"{path}: metadata '{key}' must be an integer in [0, {MAX_COUNT}], "
                                      f"got {_shown(value)}")
        elif not isinstance(value, str) or len(value) > 256:
            raise CheckpointError(f"{path}: metadata '{key}' must be a short string, got {_shown(value)}")
    return meta


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _shown(value) -> str:
    text = repr(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _converted(path, what: str, array: np.ndarray, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """array as `dtype`, refused unless it is floats of `shape` that stay finite in that dtype."""
    if array.dtype.kind != "f" or array.dtype.fields is not None or tuple(array.shape) != tuple(shape):
        raise CheckpointError(f"{path}: {what} is {array.dtype} {tuple(array.shape)}, "
                              f"expected floats of shape {tuple(shape)}")
    if not np.isfinite(array).all():
        raise CheckpointError(f"{path}: {what} contains NaN or infinite values")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    if not np.isfinite(converted).all():
        raise CheckpointError(f"{path}: {what} holds values too large for {dtype} "
                              f"(its largest magnitude is {np.finfo(dtype).max:.3g})")
    return converted


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


def _read_bounded(path, shapes, state_size: int):
    # Generous (a file from another spec should reach the clearer fingerprint error below),
    # but bounded by this model's size, so a forged header cannot exhaust memory.
    largest = max([int(np.prod(shape)) for shape in shapes] + [state_size])
    return read(path, max_elements=16 * largest + (1 << 20))


def _read_for(model, path):
    return _read_bounded(path, [array.shape for array in model.params.values()], model.flat_optimizer_state.size)


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
            values[key] = _converted(path, f"parameter '{key}'", array, target.shape, model.dtype)
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


@dataclass(frozen=True)
class Checkpoint:
    """A weights file's contents for one spec, every value validated and converted to its dtype."""
    params: dict[str, np.ndarray]  # keyed like Model.params
    optimizer_state: np.ndarray | None  # None: another optimizer's, or none saved (start afresh)
    step: int
    epoch: int | None


def read_checkpoint(spec, shapes: dict[str, tuple], state_size: int, dtype, path) -> Checkpoint:
    """Validate the whole file against a spec (its fingerprint), its parameters' shapes and its
    optimizer state's size, without a compiled model (emit reads weights so)."""
    meta, arrays = _read_bounded(path, list(shapes.values()), state_size)
    saved = meta.get("fingerprint")
    renamed = isinstance(meta.get("spec"), str) and saved == spec.fingerprint(name=meta["spec"])
    if saved != spec.fingerprint() and not renamed:
        raise CheckpointError(
            f"{path}: saved from spec {str(meta.get('spec'))[:64]!r} (fingerprint {meta.get('fingerprint')}), "
            f"which differs from this model's spec '{spec.name}' ({spec.fingerprint()}): "
            "the layers, shapes or names do not match; load(path, strict=False) copies the layers whose "
            "names and shapes match")
    dtype = np.dtype(dtype)
    values = {}
    for key, shape in shapes.items():
        if key not in arrays:
            raise CheckpointError(f"{path}: missing parameter '{key}'")
        values[key] = _converted(path, f"parameter '{key}'", arrays.pop(key), shape, dtype)
    state = arrays.pop(STATE_KEY, None)
    if arrays:
        raise CheckpointError(f"{path}: unexpected array {next(iter(arrays))[:64]!r}: "
                              "this model has no parameter of that name")
    if state is not None and (state.dtype.kind != "f" or state.dtype.fields is not None):
        raise CheckpointError(f"{path}: the optimizer state is {state.dtype}, expected floats")
    if state is not None and state.shape != (state_size,):
        state = None  # another optimizer: start its state afresh, the weights are still good
    if state is not None:
        state = _converted(path, "the optimizer state", state, (state_size,), dtype)
    return Checkpoint(values, state, meta.get("step", 0) if state is not None else 0, meta.get("epoch"))


def load(model, path) -> int | None:
    """Validate the whole file, then copy it into the model; returns the saved epoch."""
    checkpoint = read_checkpoint(model.spec, {key: view.shape for key, view in model.params.items()},
                                 model.flat_optimizer_state.size, model.flat_optimizer_state.dtype, path)
    for key, array in checkpoint.params.items():
        model.params[key][...] = array
    if checkpoint.optimizer_state is not None:
        model.flat_optimizer_state[...] = checkpoint.optimizer_state
    else:
        model.flat_optimizer_state[...] = 0
    model.step_count = checkpoint.step
    return checkpoint.epoch

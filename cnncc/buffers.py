"""The Model's numpy buffers, beside it: the parameter views C reads through and the memory check
made before any buffer is allocated."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, where the platform reports it (None elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(program, batch: int, training: bool) -> None:
    """Refuse, before allocating anything, a batch whose buffers cannot fit: more bytes than
    this machine's memory, or an activation buffer too large for C's size_t."""
    per_sample = program.activation_size * program.itemsize
    needed = program.buffer_bytes(batch, training)
    limit = physical_memory()
    if per_sample * batch <= sys.maxsize and (limit is None or needed <= limit):
        return
    gradients = ", as much again for their gradients" if training else ""
    have = f"this machine's {limit:,} bytes of memory" if limit is not None else "a size_t can count"
    raise ValueError(f"a batch of {batch:,} samples needs {needed:,} bytes of buffers ({per_sample:,} bytes "
                     f"of activations per sample{gradients}), more than {have}; use a smaller batch")


# Bytes every buffer handed to C starts on: a cache line, and the widest vector the kernels load
# (AVX-512's 64 bytes). numpy's own allocations are 16-byte aligned (glibc puts a large block 16
# bytes past a page), so every 64-byte load would straddle two cache lines: on an Intel Xeon with
# AVX-512 that cost ResNet-8's batch-1 forward a fifth of its time.
BUFFER_ALIGNMENT = 64


def aligned_zeros(count: int, dtype) -> np.ndarray:
    """A zeroed 1-d array of `count` elements whose data starts on BUFFER_ALIGNMENT bytes."""
    dtype = np.dtype(dtype)
    raw = np.zeros(count * dtype.itemsize + BUFFER_ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % BUFFER_ALIGNMENT
    return raw[skip:skip + count * dtype.itemsize].view(dtype)


def aligned_copy(values, dtype) -> np.ndarray:
    """values as a flat array of dtype whose data starts on BUFFER_ALIGNMENT bytes."""
    values = np.asarray(values, dtype).reshape(-1)
    copy = aligned_zeros(values.size, dtype)
    copy[...] = values
    return copy


class ParamViews(Mapping):
    """`model.params`: name -> a writable view into the flat parameter buffer. Assigning a key
    copies into its view (same shape, finite in the model's dtype) instead of rebinding it, so
    what C reads and what the mapping shows never part; keys cannot be added or removed."""

    def __init__(self, views: dict[str, np.ndarray]):
        self._views = views

    def __getitem__(self, key: str) -> np.ndarray:
        return self._views[key]

    def __iter__(self):
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __setitem__(self, key: str, value) -> None:
        if key not in self._views:
            raise KeyError(f"no parameter named {key!r}; parameters: {', '.join(self._views)}")
        view = self._views[key]
        value = np.asarray(value)
        if value.dtype.kind not in "biuf" or value.shape != view.shape:
            raise ValueError(f"params[{key!r}] must be a real array of shape {view.shape}, "
                             f"got {value.dtype} {value.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            converted = value.astype(view.dtype)
        if not np.isfinite(converted).all():
            raise ValueError(f"params[{key!r}] would hold NaN or infinite values in {view.dtype}")
        view[...] = converted

    def __delitem__(self, key: str) -> None:
        raise TypeError("model.params keeps every parameter: its keys cannot be removed")

    def __repr__(self) -> str:
        return f"ParamViews({{{', '.join(f'{k!r}: {v.dtype} {v.shape}' for k, v in self._views.items())}}})"


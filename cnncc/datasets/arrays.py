"""Plain .npy arrays, memory-mapped: a dataset larger than RAM stays on disk and `fit` reads
it a batch at a time (each batch's rows are converted to the model's dtype as it is gathered)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import DataError


def load_npy(x_path, y_path, *, mmap: bool = True):
    """(x, y) from two .npy files: x N x C x H x W (or N x C x L), memory-mapped read-only when
    mmap; y loaded (one label or target per sample). Pickled (object) arrays are refused."""
    arrays = []
    for path, what in ((Path(x_path), "x"), (Path(y_path), "y")):
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected a .npy array of {what})")
        try:
            array = np.load(path, mmap_mode="r" if mmap and what == "x" else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc}); save it with numpy.save") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf" or array.ndim < 1:
            raise DataError(f"{path}: a {getattr(array, 'dtype', type(array).__name__)} array of shape "
                            f"{getattr(array, 'shape', '?')} (expected numbers, one row per sample)")
        arrays.append(array)
    x, y = arrays
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{x_path}: shape {x.shape} (expected N x C x H x W or N x C x L with N >= 1)")
    if len(x) != len(y):
        raise DataError(f"{x_path} holds {len(x)} samples but {y_path} holds {len(y)} (expected equal counts)")
    return x, (y.astype(np.int64) if y.dtype.kind in "biu" else y.astype(np.float32))

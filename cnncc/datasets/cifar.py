"""CIFAR-10 and CIFAR-100 in their binary format (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz).

Each record is the label byte(s) then 3072 pixel bytes: the red plane, the green, the blue,
each 32 x 32 row-major, so a record is already C x H x W. Never the "python version": its
pickles run code when unpickled, so a directory holding them is refused with the file to get.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import DataError, _read_file_bytes

PIXELS = 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR100_TRAIN, CIFAR100_TEST = "train.bin", "test.bin"
_PICKLE_NAMES = ("data_batch_1", "test_batch", "train", "test")


def read_cifar_file(path, label_bytes: int, classes: int, label_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file: (uint8 images N x 3 x 32 x 32, int64 labels), every byte checked."""
    path = Path(path)
    raw = _read_file_bytes(path)
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{path}: {len(raw):,} bytes is not a whole number of CIFAR records of {record} bytes "
                        f"({label_bytes} label byte(s) + {PIXELS} pixels); truncated, or not this CIFAR's binary "
                        f"format?")
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = records[:, label_index].astype(np.int64)
    if labels.max() >= classes:
        bad = int(np.argmax(labels >= classes))
        raise DataError(f"{path}: record {bad} has label {labels[bad]} (expected 0..{classes - 1})")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def find_cifar(directory) -> str | None:
    """'cifar10', 'cifar100' or None: which binary CIFAR a directory holds."""
    directory = Path(directory)
    if all((directory / name).is_file() for name in (*CIFAR10_TRAIN, CIFAR10_TEST)):
        return "cifar10"
    if (directory / CIFAR100_TRAIN).is_file() and (directory / CIFAR100_TEST).is_file():
        return "cifar100"
    return None


def load_cifar(directory, *, limit=None, label_mode: str = "fine"):
    """((x_train, y_train), (x_test, y_test)) from a binary CIFAR-10 or CIFAR-100 directory:
    x float32 N x 3 x 32 x 32 scaled to [0, 1], y int64. CIFAR-100 labels are the 100 fine
    classes, or the 20 coarse ones with label_mode='coarse'."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    directory = Path(directory)
    kind = find_cifar(directory)
    if kind is None:
        if any((directory / name).is_file() for name in _PICKLE_NAMES):
            raise DataError(f"{directory}: this is the CIFAR 'python version' (pickle files), which cnncc never "
                            "reads because unpickling runs code; get the binary version (cifar-10-binary.tar.gz "
                            "or cifar-100-binary.tar.gz) and point at its directory")
        raise DataError(f"{directory}: no binary CIFAR here (expected {', '.join(CIFAR10_TRAIN)} and "
                        f"{CIFAR10_TEST} for CIFAR-10, or {CIFAR100_TRAIN} and {CIFAR100_TEST} for CIFAR-100)")
    if kind == "cifar10":
        parts = [read_cifar_file(directory / name, 1, 10) for name in CIFAR10_TRAIN]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = read_cifar_file(directory / CIFAR10_TEST, 1, 10)
    else:  # each record: the coarse label byte, then the fine one
        index, classes = (1, 100) if label_mode == "fine" else (0, 20)
        train = read_cifar_file(directory / CIFAR100_TRAIN, 2, classes, index)
        test = read_cifar_file(directory / CIFAR100_TEST, 2, classes, index)
    return tuple((x[:limit].astype(np.float32) / 255.0, y[:limit]) for x, y in (train, test))

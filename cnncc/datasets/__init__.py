"""Datasets from what people have on disk, for `cnncc train` / `cnncc evaluate --data`.

`load_source` picks the loader: the built-in synthetic set, MNIST (IDX files), an .npz
(keys x_train, y_train, optionally x_test, y_test), or a directory holding binary CIFAR-10/100,
IDX files, or one subfolder of images per class. The loaders themselves (cnncc.data for IDX,
MNIST and .npz; cifar, images and arrays here) validate what they read and name the file.
"""
from __future__ import annotations

from pathlib import Path

from .. import data
from ..data import DataError
from .split import holdout_split

SOURCES = "mnist | synthetic | FILE.npz | DIR (binary CIFAR-10/100, IDX files, or one subfolder of images per class)"


def load_source(source: str, input_shape, classes: int | None, *, data_dir=None, limit=None, notes=None,
                resize=None, seed: int = 0):
    """((x_train, y_train), (x_test, y_test)) from a --data value; what was done is appended to notes."""
    notes = [] if notes is None else notes
    if source == "synthetic":
        if classes is None:
            raise DataError("the built-in synthetic data is for classification specs "
                            "(loss: softmax_cross_entropy); pass --data FILE.npz")
        n_train, n_test = (limit, max(1, limit // 6)) if limit else (6000, 1000)
        return data.synthetic(shape=input_shape, classes=classes, n_train=n_train, n_test=n_test)
    if source == "mnist":
        if tuple(input_shape) != (1, 28, 28):
            raise DataError(f"MNIST images are 1 x 28 x 28 (C x H x W) but the spec takes "
                            f"{' x '.join(map(str, input_shape))}")
        return data.load_mnist(data_dir, limit=limit)
    path = Path(source)
    if source.endswith(".npz"):
        (x, y), (xt, yt) = data.load_npz(path, notes=notes, seed=seed)
        return ((x[:limit], y[:limit]), (xt[:limit], yt[:limit])) if limit else ((x, y), (xt, yt))
    if path.is_dir():
        from .cifar import find_cifar, load_cifar

        if find_cifar(path):
            notes.append(f"{path}: binary {find_cifar(path).upper()}, pixels scaled to [0, 1]")
            return load_cifar(path, limit=limit)
        if data.find_mnist_dir(path):
            return data.load_mnist(path, limit=limit)
        from .images import load_image_folder

        x, y, names = load_image_folder(path, channels=input_shape[0] if input_shape[0] in (1, 3) else None,
                                        size=resize)
        notes.append(f"{path}: {len(x):,} images of {len(names)} classes ({', '.join(names[:10])}"
                     f"{', ...' if len(names) > 10 else ''}), pixels scaled to [0, 1]")
        train, test, how = holdout_split(y, 0.1, seed)
        notes.append(f"{path}: {how}")
        train, test = (train[:limit], test[:limit]) if limit else (train, test)
        return (x[train], y[train]), (x[test], y[test])
    if not path.exists() and source not in ("mnist", "synthetic"):
        raise DataError(f"--data {source}: no such file or directory (expected {SOURCES})")
    raise DataError(f"--data must be {SOURCES}; got {source!r}")

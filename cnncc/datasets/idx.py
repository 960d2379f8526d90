"""Any dataset stored like MNIST: an IDX file of unsigned-byte images and one of labels
(Fashion-MNIST, KMNIST, EMNIST and others use the format; `cnncc.data.load_mnist` knows MNIST's
file names, this takes any two paths)."""
from __future__ import annotations

import numpy as np

from ..data import DataError, read_idx


def load_idx_pair(images_path, labels_path, *, limit=None) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 N x C x H x W in [0, 1], y int64): images N x H x W (one channel) or
    N x C x H x W, labels N."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise DataError(f"{images_path}: IDX images of {images.ndim} dimension(s) {images.shape} "
                        "(expected N x H x W or N x C x H x W)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: IDX labels of shape {labels.shape} (expected one label per sample, N)")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels "
                        "(expected equal counts)")
    images, labels = images[:limit], labels[:limit]
    x = images.reshape(len(images), -1, *images.shape[-2:]).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)

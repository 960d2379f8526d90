"""Holding out a test set from training data that came without one."""
from __future__ import annotations

import numpy as np


def holdout_split(y: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, test indices, a sentence saying how): a seeded shuffle, stratified by
    class when y holds integer labels (each class keeps its share in both parts), so data
    sorted by class still gets a test set of every class."""
    n = len(y)
    rng = np.random.default_rng(seed)
    if y.dtype.kind in "iub" and y.ndim == 1:
        test_parts = []
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            test_parts.append(members[:int(round(len(members) * fraction))])
        test = np.concatenate(test_parts) if test_parts else np.zeros(0, np.int64)
        if len(test) == 0:  # every class too small for a share: fall back to the plain draw
            test = rng.permutation(n)[:max(1, int(n * fraction))]
        how = f"stratified by class, seed {seed}"
    else:
        test = rng.permutation(n)[:max(1, int(n * fraction))]
        how = f"a seeded shuffle (seed {seed}; targets are not class labels, so not stratified)"
    mask = np.ones(n, bool)
    mask[test] = False
    train = rng.permutation(np.flatnonzero(mask))
    test = rng.permutation(test)
    return train, test, (f"no test split given: held out {len(test):,} of {n:,} samples "
                         f"({100 * len(test) / n:.0f}%) as the test set, {how}")

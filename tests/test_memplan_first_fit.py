"""The memory plan's first fit, which looks only at tensors live during each tensor's lifetime,
places every tensor exactly where the all-pairs definition does."""
from __future__ import annotations

import numpy as np

from cnncc.memplan import Lifetime, first_fit


def all_pairs_first_fit(tensors):
    """The definition: largest first, each at the lowest offset clear of every placed tensor
    whose lifetime overlaps its own."""
    placed, offsets = [], {}
    for t in sorted(tensors, key=lambda t: (-t.size, t.first)):
        offset = 0
        for start, other in sorted(((s, o) for s, o in placed if o.overlaps(t)), key=lambda pair: pair[0]):
            if offset + t.size <= start:
                break
            offset = max(offset, start + other.size)
        placed.append((offset, t))
        offsets[t.name] = offset
    return offsets


def test_first_fit_matches_the_all_pairs_definition():
    rng = np.random.default_rng(0)
    for case in range(300):
        steps = int(rng.integers(1, 40))
        tensors = []
        for i in range(steps):
            span = int(rng.geometric(0.3)) if rng.random() < 0.9 else int(rng.integers(0, steps))
            size = int(rng.choice([1, 2, 3, 8, 8, 16, 64]))
            tensors.append(Lifetime(f"t{i}", size, i, min(steps - 1, i + span)))
        assert first_fit(tuple(tensors)) == all_pairs_first_fit(tensors), case


def test_no_two_live_together_tensors_overlap_in_memory():
    rng = np.random.default_rng(1)
    tensors = tuple(Lifetime(f"t{i}", int(rng.integers(1, 50)), i, i + int(rng.integers(0, 5))) for i in range(400))
    offsets = first_fit(tensors)
    for a in tensors:
        for b in tensors:
            if a.name < b.name and a.overlaps(b):
                assert offsets[a.name] + a.size <= offsets[b.name] or offsets[b.name] + b.size <= offsets[a.name]


def test_many_tensors_live_together_place_as_the_definition_says():
    # a tree of adds: every leaf lives until its pairwise sum, half of them at once (the shape that
    # made the per-step lists of the old plan cubic); the many-neighbour path of first_fit
    rng = np.random.default_rng(2)
    leaves = 96
    tensors = [Lifetime(f"r{k}", int(rng.integers(1, 9)), k, leaves + k // 2) for k in range(leaves)]
    tensors += [Lifetime(f"s{k}", int(rng.integers(1, 9)), leaves + k, leaves + k + 3) for k in range(leaves // 2)]
    assert first_fit(tuple(tensors)) == all_pairs_first_fit(tensors)

"""Data augmentation, applied by `fit` to each training batch after it is gathered (never to
the dataset, never in evaluate or predict).

Four transforms, in this order: random crop with zero padding (`crop: p`: pad p pixels of
zeros on every side, cut a window of the original size at a random place; the same as a
random shift of up to p pixels filled with zeros), random shift with the edge pixels
repeated (`shift: s`), horizontal flip with probability 1/2 (`flip: true`; for a signal, time
reversal) and Gaussian noise (`noise: std`). Each batch draws from its own generator seeded
by (fit's seed, the model's step), so a run is reproducible at a seed and a resumed run
draws what the uninterrupted run would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import fields as F

AUGMENT_FIELDS = {
    "crop": F.field(F.integer(0), 0, "random crop: pad this many zero pixels on each side, cut the original size"),
    "shift": F.field(F.integer(0), 0, "random shift by up to this many pixels, the edge pixels repeated"),
    "flip": F.field(F.boolean(), False, "horizontal flip (a signal: time reversal) with probability 1/2"),
    "noise": F.field(F.number(0.0, 10.0), 0.0, "standard deviation of Gaussian noise added to each value"),
}

_AUGMENT_STREAM = 0xA0  # keeps augmentation's random numbers apart from dropout's and the shuffle's


@dataclass(frozen=True)
class Augment:
    crop: int = 0
    shift: int = 0
    flip: bool = False
    noise: float = 0.0

    def __post_init__(self):
        for key, spec_field in AUGMENT_FIELDS.items():
            try:
                spec_field.parse(getattr(self, key))
            except F.FieldError as exc:
                raise ValueError(f"augment {key} {exc.message}") from None

    @classmethod
    def from_options(cls, options) -> "Augment | None":
        """An Augment, a dict of its fields (the spec's `training.augment`), or None/False/{} for none."""
        if options is None or options is False:
            return None
        if isinstance(options, Augment):
            return options if options.active else None
        if not isinstance(options, dict):
            raise ValueError(f"augment must be an Augment, a dict with keys {', '.join(AUGMENT_FIELDS)}, "
                             f"or None, got {options!r}")
        unknown = set(options) - set(AUGMENT_FIELDS)
        if unknown:
            raise ValueError(f"unknown augment key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(AUGMENT_FIELDS)}")
        augment = cls(**options)
        return augment if augment.active else None

    @property
    def active(self) -> bool:
        return bool(self.crop or self.shift or self.flip or self.noise)

    def shape_problem(self, sample_shape) -> tuple[str, str] | None:
        """(field, message) when a crop or shift is as large as the input's side (it would leave
        nothing of the sample), else None."""
        spatial = tuple(sample_shape[1:])
        for key in ("crop", "shift"):
            value = getattr(self, key)
            if value and value >= min(spatial):
                return key, (f"augment {key} {value} must be smaller than the input's smallest side "
                             f"({min(spatial)} of {' x '.join(map(str, sample_shape))}, C x H x W)")
        return None

    def check_shape(self, sample_shape) -> None:
        problem = self.shape_problem(sample_shape)
        if problem:
            raise ValueError(problem[1])

    def apply(self, batch: np.ndarray, seed: int, step: int) -> None:
        """Transform a batch [N, C, *spatial] in place."""
        rng = np.random.default_rng([seed, _AUGMENT_STREAM, step])
        if self.crop:
            _translate(batch, rng.integers(-self.crop, self.crop + 1, (batch.shape[0], batch.ndim - 2)), edge=False)
        if self.shift:
            _translate(batch, rng.integers(-self.shift, self.shift + 1, (batch.shape[0], batch.ndim - 2)), edge=True)
        if self.flip:
            flipped = np.flatnonzero(rng.random(batch.shape[0]) < 0.5)
            batch[flipped] = batch[flipped, ..., ::-1]
        if self.noise:
            batch += (self.noise * rng.standard_normal(batch.shape, dtype=np.float64)).astype(batch.dtype)


def _translate(batch: np.ndarray, offsets: np.ndarray, edge: bool) -> None:
    """Move sample i by offsets[i] pixels along each spatial axis; the uncovered border is zeros,
    or (edge) the nearest pixel of the moved image repeated."""
    for sample, offset in zip(batch, offsets):
        if not offset.any():
            continue
        moved = np.zeros_like(sample)
        source, target = [slice(None)], [slice(None)]
        for size, shift in zip(sample.shape[1:], offset):
            source.append(slice(max(0, -shift), size - max(0, shift)))
            target.append(slice(max(0, shift), size - max(0, -shift)))
        moved[tuple(target)] = sample[tuple(source)]
        if edge:
            for axis, (size, shift) in enumerate(zip(sample.shape[1:], offset), 1):
                view = np.moveaxis(moved, axis, 0)  # the axis being filled first
                if shift > 0:
                    view[:shift] = view[shift]
                elif shift < 0:
                    view[size + shift:] = view[size + shift - 1]
        sample[...] = moved

"""ONNX's Resize as cnncc's upsample2d fields: which of its coordinate rules compute PyTorch's
nearest and bilinear (align_corners=False) upsampling by integer factors.

Resize maps output index o of an axis scaled by s to the input coordinate x by its
coordinate_transformation_mode, then reads the nearest input (rounded by nearest_mode) or
interpolates the two around x. With s an integer and o = k*s + r (0 <= r < s):
- asymmetric: x = o/s = k + r/s, rounded down (nearest_mode floor) is k, cnncc's o // s;
- half_pixel and pytorch_half_pixel: x = (o + 0.5)/s - 0.5 = k + (r + 0.5)/s - 0.5, within 0.5 of k
  and never halfway, so either round_prefer mode gives k too; and it is the bilinear source of
  PyTorch's align_corners=False (the two modes differ only for an output of length 1, which at an
  integer scale is an input of 1 at scale 1, where both read x = 0).
"""
from __future__ import annotations

import numpy as np

NEAREST_RULES = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                 ("half_pixel", "round_prefer_ceil"), ("pytorch_half_pixel", "round_prefer_floor"),
                 ("pytorch_half_pixel", "round_prefer_ceil")}
LINEAR_RULES = ("half_pixel", "pytorch_half_pixel")
SUPPORTED = ("Resize of an image by integer factors of its height and width: mode nearest with "
             "coordinate_transformation_mode asymmetric and nearest_mode floor (PyTorch's nearest) or half_pixel/"
             "pytorch_half_pixel with a round_prefer nearest_mode, or mode linear with half_pixel/pytorch_half_pixel "
             "(PyTorch's bilinear, align_corners=False); exclude_outside=0, antialias=0")


class ResizeError(ValueError):
    """A Resize cnncc cannot express (the message says which attribute or input, and what is supported)."""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def upsample_mode(attrs) -> str:
    """'nearest' or 'bilinear', from the node's mode and coordinate rules."""
    mode = _text(attrs.get("mode", "nearest"))
    transform = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    for name, default in (("exclude_outside", 0), ("antialias", 0)):
        if attrs.get(name, default) != default:
            raise ResizeError(f"{name}={attrs[name]}; cnncc supports {SUPPORTED}")
    if mode == "nearest":
        rounding = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if (transform, rounding) not in NEAREST_RULES:
            raise ResizeError(f"mode nearest with coordinate_transformation_mode {transform} and nearest_mode "
                              f"{rounding}; cnncc supports {SUPPORTED}")
        return "nearest"
    if mode == "linear" and transform in LINEAR_RULES:
        return "bilinear"
    raise ResizeError(f"mode {mode} with coordinate_transformation_mode {transform}; cnncc supports {SUPPORTED}")


def scale_factors(attrs, shape, batches, scales, sizes) -> tuple[int, int]:
    """The integer (height, width) factors of a Resize of a C x H x W sample. `scales` is the
    constant scales input (None if absent); `sizes` the sizes input as evaluated at each probe
    batch size in `batches` (used when scales is absent). Both hold one value per axis in the
    `axes` attribute (every axis, batch first, by default)."""
    rank = len(shape) + 1
    axes = [int(a) % rank for a in attrs.get("axes", range(rank))]
    if len(set(axes)) != len(axes):
        raise ResizeError(f"axes {list(attrs['axes'])} name an axis twice")

    def per_axis(values, what):
        values = np.asarray(values, np.float64).reshape(-1)
        if len(values) != len(axes):
            raise ResizeError(f"{what} hold {len(values)} values for {len(axes)} axes")
        return values

    if scales is not None:
        per_probe = [per_axis(scales, "scales")] * len(batches)
    else:
        policy = _text(attrs.get("keep_aspect_ratio_policy", "stretch"))
        if policy != "stretch":
            raise ResizeError(f"keep_aspect_ratio_policy {policy}; cnncc supports sizes with the policy stretch")
        per_probe = [per_axis(target, "sizes") / np.array([(batch, *shape)[a] for a in axes])
                     for batch, target in zip(batches, sizes)]
    factors = set()
    for values in per_probe:
        full = [1.0] * rank
        for axis, value in zip(axes, values):
            full[axis] = float(value)
        if full[0] != 1.0 or full[1] != 1.0:
            raise ResizeError(f"scales {full} resize the batch or the channels; cnncc upsamples the height and width")
        if any(not np.isfinite(s) or s < 1 or s != int(s) for s in full[2:]):
            raise ResizeError(f"scales {full[2:]} of the height and width; cnncc supports {SUPPORTED}")
        factors.add((int(full[2]), int(full[3])))
    if len(factors) != 1:
        raise ResizeError("sizes whose scale depends on the batch size")
    return factors.pop()


def upsample_fields(mode: str, factors: tuple[int, int]) -> dict:
    """The spec fields, written short (one factor when both are equal; nearest is the default mode)."""
    fields = {"scale_factor": factors[0] if factors[0] == factors[1] else list(factors)}
    if mode != "nearest":
        fields["mode"] = mode
    return fields

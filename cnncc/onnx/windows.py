"""The sliding-window attributes of ONNX's Conv and pools, as cnncc's spec fields.

ONNX gives padding as explicit `pads` (all begins, then all ends) or as `auto_pad`; cnncc's fields
are one value per axis, 'same', or [top, left, bottom, right] (1-D: [left, right]). The output
sizes are cnncc's own formula (layers/formulas.py).
"""
from __future__ import annotations

import math

from ..layers.formulas import output_size, same_padding


class WindowError(ValueError):
    """Window attributes cnncc cannot express (the message says which and why)."""


def explicit_pads(attrs, spatial, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """(begins, ends) per spatial axis, from `pads` or `auto_pad`."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    rank = len(spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            small, large = same_padding(n, k, s, d)  # the odd remainder at the end: SAME_UPPER
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
        return begins, ends
    if auto == "VALID":
        return [0] * rank, [0] * rank
    if auto != "NOTSET":
        raise WindowError(f"auto_pad {auto!r}; ONNX defines NOTSET, SAME_UPPER, SAME_LOWER and VALID")
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * rank))]
    if len(pads) != 2 * rank:
        raise WindowError(f"pads {pads} should hold {2 * rank} values (begins, then ends)")
    if min(pads) < 0:
        raise WindowError(f"negative pads {pads}")
    return pads[:rank], pads[rank:]


def output_sizes(spatial, kernel, strides, dilations, begins, ends) -> list[int]:
    sizes = [output_size(n, k, s, b, e, d) for n, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begins, ends)]
    if min(sizes) < 1:
        raise WindowError(f"the window {list(kernel)} is larger than its padded input {list(spatial)}")
    return sizes


def check_ceil_mode(attrs, spatial, kernel, strides, begins, ends) -> None:
    """ceil_mode=1 is accepted where it changes nothing: where it would add a last, partial window,
    cnncc (whose pools have no such windows) refuses."""
    if not attrs.get("ceil_mode", 0):
        return
    for n, k, s, b, e in zip(spatial, kernel, strides, begins, ends):
        ceil = math.ceil((n + b + e - k) / s) + 1
        if (ceil - 1) * s >= n + b:  # the last window would start in the end padding
            ceil -= 1
        if ceil != output_size(n, k, s, b, e):
            raise WindowError(f"ceil_mode=1 adds a partial window at the end of an axis of size {n} (padded "
                              f"{b} + {e}, kernel {k}, stride {s}): cnncc's pools have only whole windows; export with ceil_mode=False "
                              "(or pad the input so that the windows fit)")


def padding_field(spatial, kernel, strides, dilations, begins, ends):
    """The spec's `padding`: an int or pair where each axis is symmetric, 'same' where it is cnncc's
    'same', else the sides one by one ([top, left, bottom, right], or [left, right] for a signal)."""
    same = [same_padding(n, k, s, d) for n, k, s, d in zip(spatial, kernel, strides, dilations)]
    one_d = len(spatial) == 1
    if all(b == e for b, e in zip(begins, ends)):
        return begins[0] if one_d or begins[0] == begins[1] else list(begins)
    if all((b, e) == pair for b, e, pair in zip(begins, ends, same)):
        return "same"
    return [begins[0], ends[0]] if one_d else [begins[0], begins[1], ends[0], ends[1]]


def window_fields(one_d: bool, kernel, strides, dilations=None, stride_default=None) -> dict:
    """kernel, stride and dilation fields, written short (one value for a square window) and left out
    where they are the kind's default."""
    def short(values):
        values = list(values)
        return values[0] if one_d or values[0] == values[1] else values

    fields = {"kernel": short(kernel)}
    if list(strides) != list(stride_default or [1] * len(strides)):
        fields["stride"] = short(strides)
    if dilations is not None and any(d != 1 for d in dilations):
        fields["dilation"] = short(dilations)
    return fields

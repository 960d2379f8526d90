"""The shape formulas of the notes, written once.

The checker, the `--explain` report and the IR all call these; nothing else computes an
output size or a padding.
"""
from __future__ import annotations

import math


def output_size(n: int, k: int, stride: int, pad_before: int, pad_after: int, dilation: int = 1) -> int:
    """floor((n + p_before + p_after - d*(k-1) - 1) / s) + 1.

    With symmetric padding p and d = 1 this is the notes' floor((n + 2p - f)/s) + 1, which
    equals their ceil((n + 2p - (k-1))/s). May return < 1; the caller reports that.
    """
    span = n + pad_before + pad_after - dilation * (k - 1) - 1
    if span < 0:
        return 0
    return span // stride + 1


def effective_kernel(k: int, dilation: int) -> int:
    """How many input cells one (dilated) kernel window spans."""
    return dilation * (k - 1) + 1


def same_padding(n: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding that keeps ceil(n/s) outputs; an odd remainder goes to the bottom/right."""
    out = math.ceil(n / stride)
    total = max((out - 1) * stride + effective_kernel(k, dilation) - n, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, n: int, k: int, stride: int, dilation: int, axis: int) -> tuple[int, int]:
    """The (before, after) padding of one axis (0: height, 1: width) for a field value 'same' |
    'valid' | (ph, pw), the same on both sides, | (top, left, bottom, right), each side its own."""
    if padding == "same":
        return same_padding(n, k, stride, dilation)
    if padding == "valid":
        return 0, 0
    if len(padding) == 4:
        return padding[axis], padding[axis + 2]
    return padding[axis], padding[axis]


def pads_per_side(padding, shape, kernel, stride, dilation=(1, 1)) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a conv or pool field `padding` on a (C, H, W) image or a
    (C, L) signal (a height-1 image; its kernel, stride and dilation are (1, n) pairs)."""
    h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, shape[1])
    return (resolve_padding(padding, h, kernel[0], stride[0], dilation[0], 0),
            resolve_padding(padding, w, kernel[1], stride[1], dilation[1], 1))


def explain_output_size(n: int, k: int, stride: int, pad_before: int, pad_after: int, dilation: int = 1) -> str:
    """The output-size formula with the numbers put in, e.g. floor((32 + 2*0 - 5)/1) + 1 = 28."""
    pad = f"2*{pad_before}" if pad_before == pad_after else f"{pad_before} + {pad_after}"
    if dilation == 1:
        text = f"floor(({n} + {pad} - {k})/{stride}) + 1"
    else:
        text = f"floor(({n} + {pad} - {dilation}*({k} - 1) - 1)/{stride}) + 1"
    return f"{text} = {output_size(n, k, stride, pad_before, pad_after, dilation)}"


def transposed_output_size(n: int, k: int, stride: int, pad: int, dilation: int = 1, output_padding: int = 0) -> int:
    """(n - 1)*s - 2p + d*(k - 1) + output_padding + 1: the size whose conv with the same k, s, p, d
    gives back n (output_padding picks one of the s sizes that do). May return < 1; the caller
    reports that."""
    return (n - 1) * stride - 2 * pad + dilation * (k - 1) + output_padding + 1


def explain_transposed_output_size(n: int, k: int, stride: int, pad: int, dilation: int = 1,
                                   output_padding: int = 0) -> str:
    """The transposed-conv size formula with the numbers put in, e.g. (7 - 1)*2 - 2*1 + 1*(3 - 1) + 1 + 1 = 14."""
    text = f"({n} - 1)*{stride} - 2*{pad} + {dilation}*({k} - 1) + {output_padding} + 1"
    return f"{text} = {transposed_output_size(n, k, stride, pad, dilation, output_padding)}"

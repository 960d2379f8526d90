"""Which int8 kernel runs each op, and its blocking and scratch: the kernel plan, decided once
from the op's dimensions (never from weights), so `cnncc check --int8` counts the scratch the
emitted program uses.

    conv        im2col by blocks: PIXEL_BLOCK output pixels' patches (K_GROUP bytes each, stored
                as input + 128 so they are unsigned) against FILTER_BLOCK filters at once; the
                inner loop is a dot product over K_GROUP of unsigned by signed bytes into int32,
                which GCC and Clang turn into vpdpbusd / pmaddubsw-style multiply-adds. The 128
                is taken back with the filter's weight sum. Scratch: PIXEL_BLOCK patches.
    direct      fewer than DIRECT_BELOW filters per group (depthwise convs, small first layers):
                each output row is a sum of shifted input rows times one weight each, from
                copies of the group's channels with their padding (C_IN_PER_GROUP x PLANE_H x
                PLANE_W bytes; none without padding), ROW_BLOCK rows at a time. No gathering.
    dense       DENSE_BLOCK outputs at once, the same unsigned-by-signed dot product; no scratch.

Each kernel requantizes its int32 accumulators in loops of (ideally) 16 or more, the width at which
compilers vectorise the int64 arithmetic: a conv's FILTER_BLOCK x PIXEL_BLOCK tile, a dense block,
a depthwise kernel's ROW_BLOCK rows. Those accumulators live on the stack (at most 4 * 64 bytes, or
one output row of a direct kernel wider than 64).
"""
from __future__ import annotations

from dataclasses import dataclass

PIXEL_BLOCK = 4  # output pixels whose patches are gathered together
FILTER_BLOCK = 4  # filters computed together: 4 x 4 int32 accumulators, requantized as one loop of 16
DENSE_BLOCK = 16  # dense outputs computed together (16 accumulators)
REQUANTIZE_LANES = 64  # a depthwise kernel requantizes up to this many outputs at a time (whole rows)


@dataclass(frozen=True)
class KernelPlan:
    template: str  # the file in templates/int8/layers/ (without .c.j2)
    consts: dict[str, int]  # the blocking, for the kernel's enum
    scratch_bytes: int  # bytes of the arena's shared scratch this op uses (0: the kernel takes none)
    scratch_type: str = "int8_t"  # the C type of the scratch elements the kernel takes


DIRECT_BELOW = 16  # fewer filters per group than this: the direct kernel (a patch would be gathered for few)
DIRECT_PLANES_MAX = 4096  # ... unless its padded planes would need more scratch than this and the patches


def plan_kernel(op) -> KernelPlan | None:
    """The kernel plan of a conv op; None for the other kinds (one kernel each)."""
    d = op.dims
    if op.kind != "conv":
        return None
    pixels = d["H_OUT"] * d["W_OUT"]
    pixel_block = min(PIXEL_BLOCK, pixels)
    patches = pixel_block * d["K_GROUP"]
    # the input rows the outputs read, padding included (bottom and right padding only as far as read)
    plane_h = (d["H_OUT"] - 1) * d["STRIDE_H"] + (d["KH"] - 1) * d["DIL_H"] + 1
    plane_w = (d["W_OUT"] - 1) * d["STRIDE_W"] + (d["KW"] - 1) * d["DIL_W"] + 1
    planes = d["C_IN_PER_GROUP"] * plane_h * plane_w if d["PADDED"] else 0
    if d["C_IN_PER_GROUP"] == 1 and d["C_OUT_PER_GROUP"] < DIRECT_BELOW and planes <= max(patches, DIRECT_PLANES_MAX):
        row_block = min(d["H_OUT"], max(1, REQUANTIZE_LANES // d["W_OUT"]))
        return KernelPlan("direct", {"PLANE_H": plane_h, "PLANE_W": plane_w, "ROW_BLOCK": row_block}, planes)
    return KernelPlan("conv", {"PIXELS": pixels, "PIXEL_BLOCK": pixel_block,
                               "FILTER_BLOCK": min(FILTER_BLOCK, d["C_OUT_PER_GROUP"])}, patches, "uint8_t")

"""Which int8 kernel runs each conv op, with its blocking and scratch: the kernel plan, decided once
from the op's dimensions (never from weights), so `cnncc check --int8` counts the scratch the
emitted program uses. Each kind is one template in templates/int8/layers/.

These are the portable kernel set's plans: strict C99, what `cnncc emit --int8` and the board
build run. The host build (QuantizedModel) plans with the vector set (vector_kernels.py), which
falls back to these for the shapes it has no kernel of its own for (layout.KERNEL_SETS).

    shifted   stride 1 with short patches (K_GROUP <= SHIFTED_MAX_TAPS: depthwise convs, first
              layers), or up to SHIFTED_LONG_TAPS taps on planes of SHIFTED_LONG_PIXELS or more.
              ROW_BLOCK output rows are one run of int32 accumulators with the source's row pitch;
              each pair of taps adds its two weights times the same run shifted by (ic, kh, kw), a
              long unit-stride loop of 16-bit multiply-adds (two int8 products fit in int16; the
              PITCH - W_OUT accumulators past each row's end are computed and not stored).
              FILTER_BLOCK filters share each run. Scratch: ROW_BLOCK + (KH - 1) * DIL_H padded rows
              of each of the group's input channels (none without padding).
    direct    strided, one input channel and fewer than DIRECT_BELOW filters per group (strided
              depthwise convs): each output row a sum of strided input rows times one weight each,
              from copies of the group's channels with their padding (C_IN_PER_GROUP x PLANE_H x
              PLANE_W bytes, none without padding), ROW_BLOCK rows requantized together.
    conv      everything else: im2col by blocks. PIXEL_BLOCK output pixels' patches (K_GROUP bytes
              each, stored as input + 128 so that they are unsigned) meet FILTER_BLOCK filters at once;
              the inner loop is a dot product over K_GROUP of unsigned by signed bytes into int32
              (vpdpbusd / pmaddubsw-style multiply-adds). The 128 is taken back as 128 times the
              filter's weight sum. Scratch: PIXEL_BLOCK patches.

The kernels requantize in loops of (ideally) 16 or more accumulators, the width from which compilers
vectorise the int64 arithmetic: the conv kernel's FILTER_BLOCK x PIXEL_BLOCK tile, the other two's
blocks of rows. Those accumulators are on the stack: at most 4 * FILTER_BLOCK * PIXEL_BLOCK bytes
(conv), 4 * REQUANTIZE_LANES (direct) or 4 * SHIFTED_FILTER_BLOCK * SHIFTED_LANES (shifted), or
one output row where a row is longer than that.
"""
from __future__ import annotations

from dataclasses import dataclass

PIXEL_BLOCK = 4  # conv: output pixels whose patches are gathered together
FILTER_BLOCK = 4  # conv: filters computed together, 4 x 4 int32 accumulators requantized as one loop of 16
SHIFTED_MAX_TAPS = 32  # shifted: stride-1 convs with at most this many taps per output (K_GROUP)
# shifted also: up to this many taps when the planes have at least this many output pixels (measured: the
# blocked patches win with more taps, whose dot products repay their horizontal sums, or with small planes)
SHIFTED_LONG_TAPS, SHIFTED_LONG_PIXELS = 256, 256
SHIFTED_LANES = 512  # shifted: about this many accumulators per filter in a block of rows
SHIFTED_FILTER_BLOCK = 4  # shifted: filters sharing each source run
DIRECT_BELOW = 16  # direct: fewer filters per group than this (a gathered patch would serve few)
DIRECT_PLANES_MAX = 4096  # direct: unless its padded planes need more than this and than the patches
REQUANTIZE_LANES = 64  # direct: about this many accumulators per block of rows
# conv: the patch's dot products run as K_MAIN = a multiple of K_STEP taps, then the rest, in two loops: a
# compiler vectorising the first at its widest (64 bytes with AVX-512) leaves no slow scalar tail
K_STEP = 64


@dataclass(frozen=True)
class KernelPlan:
    template: str  # the file in templates/int8/layers/ (without .c.j2)
    consts: dict[str, int]  # the blocking, for the kernel's enum
    scratch_bytes: int  # bytes of the arena's shared scratch this op uses (0: the kernel takes none)
    scratch_type: str = "int8_t"  # the C type of the scratch elements the kernel takes


def plan_kernel(op) -> KernelPlan | None:
    """The portable kernel plan of a conv op; None for the other kinds (one kernel each)."""
    if op.kind != "conv":
        return None
    d = op.dims
    pixels = d["H_OUT"] * d["W_OUT"]
    pixel_block = min(PIXEL_BLOCK, pixels)
    patches = pixel_block * d["K_GROUP"]
    # the input the outputs read, padding included (bottom and right padding only as far as read)
    plane_h = (d["H_OUT"] - 1) * d["STRIDE_H"] + (d["KH"] - 1) * d["DIL_H"] + 1
    plane_w = (d["W_OUT"] - 1) * d["STRIDE_W"] + (d["KW"] - 1) * d["DIL_W"] + 1
    if d["STRIDE_H"] == 1 and d["STRIDE_W"] == 1 and (d["K_GROUP"] <= SHIFTED_MAX_TAPS or (
            d["K_GROUP"] <= SHIFTED_LONG_TAPS and pixels >= SHIFTED_LONG_PIXELS)):
        pitch = plane_w if d["PADDED"] else d["W_IN"]
        row_block = min(d["H_OUT"], max(1, SHIFTED_LANES // pitch))
        rows_copy = d["C_IN_PER_GROUP"] * (row_block + (d["KH"] - 1) * d["DIL_H"]) * plane_w if d["PADDED"] else 0
        return KernelPlan("shifted", {"PLANE_W": plane_w, "ROW_BLOCK": row_block,
                                      "FILTER_BLOCK": min(SHIFTED_FILTER_BLOCK, d["C_OUT_PER_GROUP"])}, rows_copy)
    planes = d["C_IN_PER_GROUP"] * plane_h * plane_w if d["PADDED"] else 0
    if d["C_IN_PER_GROUP"] == 1 and d["C_OUT_PER_GROUP"] < DIRECT_BELOW and planes <= max(patches,
                                                                                          DIRECT_PLANES_MAX):
        row_block = min(d["H_OUT"], max(1, REQUANTIZE_LANES // d["W_OUT"]))
        return KernelPlan("direct", {"PLANE_H": plane_h, "PLANE_W": plane_w, "ROW_BLOCK": row_block}, planes)
    return KernelPlan("conv", {"PIXELS": pixels, "PIXEL_BLOCK": pixel_block,
                               "FILTER_BLOCK": min(FILTER_BLOCK, d["C_OUT_PER_GROUP"]), "K_STEP": K_STEP,
                               "K_MAIN": d["K_GROUP"] // K_STEP * K_STEP}, patches, "uint8_t")

"""The host build's int8 kernel set (VECTOR): kernels written for the widest integer multiply-adds of
the machine the Python module is compiled for (-march=native), chosen per op like the portable plans
(kernels.py) and falling back to them where this set has no kernel. The emitted C (`cnncc emit
--int8`, the board) never uses these: it stays strict C99.

Every kernel here builds on templates/int8/vector.c.j2's lanes: Q_LANES = 16 int32 accumulators that
add the dot products of 16 groups of four unsigned bytes with one group of four signed bytes. With
AVX-512 VNNI that is one vpdpbusd; with AVX2 two vpmaddwd on the bytes widened to 16 bits (exact: a
pair of u8 x s8 products fits in int32, where vpmaddubsw's int16 pair sums would saturate); otherwise
plain C. The three give the same bits as the portable kernels and the integer reference.

    dot4       every conv but a stride-1 depthwise one: im2col by blocks of PIXEL_BLOCK output pixels
               (VECTORS lane vectors), each patch stored four taps deep ("quads": quads[k/4][pixel][k%4],
               input + 128 so unsigned, a missing tap of the last quad weighted 0), which FILTER_BLOCK filters
               meet at once in FILTER_BLOCK x VECTORS lane accumulators; the 128 is taken back as 128 x the
               filter's weight sum. A padded input is first copied with its padding (C_IN_PER_GROUP x
               PLANE_H x PLANE_W bytes), so the patches are runs of plain copies: SEGMENT output pixels
               in a row read the source at one stride (the whole plane, when it is contiguous there).
               The taps' offsets in the window are a table on the stack, found once a call, so filters
               longer than DOT4_MAX_TAPS take the portable conv kernel instead.
               Scratch: the quads of one block, then the padded planes.
    depthwise  stride-1 depthwise convs (one input channel and one filter per group): each channel's
               plane copied with its padding, then ROW_BLOCK output rows are one run of int32
               accumulators with the copy's row pitch, and each tap adds its weight times the same run
               shifted by (kh, kw), a unit-stride int32 multiply-add (no 16-bit pair forms: with one
               filter per group they cost more than they save), DEPTHWISE_BLOCK_LANES accumulators at a
               time, so that the multiplies' latencies overlap. Scratch: PLANE_H x PLANE_W bytes and
               DEPTHWISE_BLOCK_LANES zeros after them (the last block's lanes read past the plane).
    add_tables every add: an input's rescaled term (TFLite's (x - z) * 2^20 times its multiplier) depends on
               its int8 value alone, so each input's 256 terms are tabulated once per call; each element is
               then a sum of lookups and the output's requantization, 16 lanes at a time.
"""
from __future__ import annotations

from .kernels import KernelPlan, plan_kernel

LANES = 16  # int32 accumulators per lane vector (vector.c.j2's Q_LANES)
QUAD = 4  # the taps one lane's multiply-add takes
DOT4_VECTORS = 4  # dot4: lane vectors of output pixels per block (64 pixels) ...
DOT4_FILTER_BLOCK = 4  # ... times this many filters: 16 accumulators, half of AVX-512's registers
DEPTHWISE_LANES = 512  # depthwise: about this many accumulators per block of rows
DEPTHWISE_BLOCK_LANES = 4 * LANES  # depthwise: accumulators computed together (the last block reads past the plane)
DOT4_MAX_TAPS = 8192  # dot4: taps per filter (K_GROUP) at most, for its table of tap offsets on the stack (32 KB)


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def _plane(d) -> tuple[int, int]:
    """The input rows and columns the outputs read, padding included (bottom and right only as far as read)."""
    return ((d["H_OUT"] - 1) * d["STRIDE_H"] + (d["KH"] - 1) * d["DIL_H"] + 1,
            (d["W_OUT"] - 1) * d["STRIDE_W"] + (d["KW"] - 1) * d["DIL_W"] + 1)


def plan_vector_kernel(op) -> KernelPlan | None:
    """The host set's plan of an op: its own kernels for convs and adds, the portable plan otherwise."""
    if op.kind == "add":
        return KernelPlan("add_tables", {}, 0)
    if op.kind != "conv":
        return plan_kernel(op)
    d = op.dims
    plane_h, plane_w = _plane(d)
    stride_1 = d["STRIDE_H"] == 1 and d["STRIDE_W"] == 1
    if d["C_IN_PER_GROUP"] == 1 and d["C_OUT_PER_GROUP"] == 1:
        if not stride_1:
            return plan_kernel(op)  # strided depthwise: the portable direct rows
        row_block = min(d["H_OUT"], max(1, DEPTHWISE_LANES // plane_w))
        return KernelPlan("depthwise", {"PLANE_H": plane_h, "PLANE_W": plane_w, "ROW_BLOCK": row_block,
                                        "BLOCK_LANES": DEPTHWISE_BLOCK_LANES},
                          plane_h * plane_w + DEPTHWISE_BLOCK_LANES)
    if d["K_GROUP"] > DOT4_MAX_TAPS:
        return plan_kernel(op)  # a filter too long for dot4's tap table: the portable conv
    pixels = d["H_OUT"] * d["W_OUT"]
    pixel_block = min(DOT4_VECTORS * LANES, _ceil(pixels, LANES))
    pitch = plane_w if d["PADDED"] else d["W_IN"]
    k_quads = -(-d["K_GROUP"] // QUAD)
    planes = d["C_IN_PER_GROUP"] * plane_h * plane_w if d["PADDED"] else 0
    consts = {"PIXELS": pixels, "PIXEL_BLOCK": pixel_block, "VECTORS": pixel_block // LANES,
              "FILTER_BLOCK": min(DOT4_FILTER_BLOCK, d["C_OUT_PER_GROUP"]), "K_QUADS": k_quads,
              "SEGMENT": pixels if stride_1 and pitch == d["W_OUT"] else d["W_OUT"]}
    if d["PADDED"]:
        consts.update(PLANE_H=plane_h, PLANE_W=plane_w)
    return KernelPlan("dot4", consts, k_quads * QUAD * pixel_block + planes, "uint8_t")

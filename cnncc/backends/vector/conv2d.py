"""The conv2d (and conv1d, as height 1) kernel plans of the vector backend, beside their templates
templates/layers/conv2d_shifted.c.j2, conv2d_im2col.c.j2, conv2d_depthwise.c.j2,
conv2d_pooled_backward.c.j2 and conv2d_winograd.c.j2.

Per sample and group a conv is out[C_OUT_PER_GROUP, pixels] = weight[C_OUT_PER_GROUP, K_GROUP] x
patches[K_GROUP, pixels]. The plan picks how the patch matrix is read: in place from the shifted
(zero-padded) input for stride 1 ("shifted"), or built by im2col for any stride. A stride-1
depthwise conv (one input channel per group) takes a plan of its own ("depthwise"): its groups are
too small for the products' blocking, so it works channel by channel on flat rows. A 3x3 stride-1
conv with 16 or more channels in and out computes its forward by Winograd's F(2x2, 3x3), 16
multiply-adds per 2x2 output tile where the direct conv does 36 ("winograd", plans_winograd), and
with 32 or more channels and enough pixels by F(4x4, 3x3), 36 per 4x4 tile (winograd_tile); its
backward is the shifted one, whose input and weight gradients go by F(2x2, 3x3) too, or the
pooled one. A conv followed by
a maxpool (ir.PooledBackward) gets a backward of its own that visits each pool window's maximum
only. The plan also lays out the scratch of the kernels: SAMPLE_SLOTS slots of one sample's scratch
(an OpenMP build runs them on its threads), the forward's regions first (an inference build needs
only those), then what the samples share. Each kernel's enum names only the constants it reads.
"""
from __future__ import annotations

import math

from ..plan import KernelPlan, Planner, PlanRequest, resolve_roles

DOTS_BELOW_FILTERS = 16  # filters per group below which weight gradients are dot products
ROW_LANES = 16  # the pooled backward pads kernel rows to whole vectors of up to this many lanes

# depthwise convs with up to this many filters per channel take the depthwise plan: with more, the
# general products' row blocks share each load of the input among more filters
DEPTHWISE_MAX_MULTIPLIER = 4

SHIFTED, IM2COL, POOLED = "layers/conv2d_shifted", "layers/conv2d_im2col", "layers/conv2d_pooled_backward"
DEPTHWISE = "layers/conv2d_depthwise"
WINOGRAD = "layers/conv2d_winograd"

# Winograd F(2x2, 3x3) forwards (conv2d_winograd.c.j2): for convs with at least this many input
# channels and filters. With fewer, the transforms cost about what the products save.
WINOGRAD_MIN_CHANNELS = 16
# the transformed inputs and outputs of one block of tiles (16 x (C_IN + C_OUT) x tiles reals) are
# kept to about this many bytes, to stay in the L2 cache between the transforms and the products
WINOGRAD_BLOCK_BYTES = 256 * 1024
WINOGRAD_SKEW = 16  # elements: one 64-byte cache line of float32
# F(4x4, 3x3) forwards (conv2d_winograd4.j2) for convs with at least this many channels in and
# out: 36 multiply-adds per 4x4 output tile, 2.25 per output pixel where F(2x2, 3x3) does 4. Its
# transforms cost a little more per pixel, which the products of fewer channels do not repay.
WINOGRAD4_MIN_CHANNELS = 32
# and at least this many 4x4 tiles per sample (the products' columns: one AVX-512 vector). With
# fewer (an 8x8 output has 4) the products' vectors run mostly empty: ResNet-8's 64-channel 8x8
# conv took 1.8 ms by F(4x4) and 0.96 ms by F(2x2) at batch 32.
WINOGRAD4_MIN_TILES = 16
# and transformed filters (36 x C_IN x C_OUT float32s, 4x the weights) of at most this many bytes.
# A device build (`cnncc emit`) holds them in its RAM: VGG's 128-channel convs would take VGG's
# batch-1 arena from 2.0 to 3.7 MB, past the 4 MB MPS2 board's RAM with the rest. The Python
# module's scratch is the host's memory: there F(4x4) took VGG's batch-1 latency from 976-990 to
# 842-864 us and its training step at batch 64 from 140-142 to 126-127 ms with those convs' 1.2
# and 2.4 MB of transformed filters (Zen 4, 1 MB of L2 per core: the products stream them from
# L3 and still win). Past 4 MB it was not measured.
WINOGRAD4_MAX_FILTER_BYTES = {"device": 1024 * 1024, "host": 4 * 1024 * 1024}
# F(4x4) blocks hold at least this many tiles (two AVX-512 vectors of columns for the products),
# past WINOGRAD_BLOCK_BYTES if need be: its 36 matrices would otherwise leave too few
WINOGRAD4_MIN_BLOCK_TILES = 32
# A strided conv's input gradient goes by phases (_din_phases) where every phase's wide pixels fill
# their blocks of this many columns (an AVX-512 gemm_nn block's, the widest; narrower vectors waste
# less) to this fraction or more. ResNet-8's 16x16-output stride-2 conv (phases of 271 wide
# pixels, 94% of 9 blocks) took 4.47 ms by phases and 5.0 ms by col2im for its backward at batch
# 64; its 8x8 one (71 wide pixels, 74% of 3 blocks) 4.05 ms by phases and 3.85 ms by col2im.
PHASE_COLUMN_BLOCK = 32
PHASED_DIN_MIN_FILL = 0.9
GROUPED = ("C_IN", "H_IN", "W_IN", "C_OUT", "GROUPS", "C_IN_PER_GROUP", "C_OUT_PER_GROUP", "K_GROUP", "PIXELS_OUT")
TAPS = ("KH", "KW", "DIL_H", "DIL_W")
WINDOWS = TAPS + ("STRIDE_H", "STRIDE_W", "PAD_TOP", "PAD_LEFT", "H_OUT", "W_OUT")  # col2im's arguments


class ConvPlanner(Planner):
    templates = (SHIFTED, IM2COL, DEPTHWISE, POOLED, WINOGRAD)

    def __init__(self, pooled_backward: bool = True, winograd: bool = True, winograd4: bool = True):
        """pooled_backward: whether the pooled backward may be planned (its template needs vector
        types: a backend without them plans every conv's backward as shifted, im2col or depthwise).
        winograd: whether a 3x3 conv's forward may go by Winograd's F(2x2, 3x3) (plans_winograd),
        winograd4: and by F(4x4, 3x3) where it has the channels (winograd_tile)."""
        self.pooled_backward = pooled_backward
        self.winograd = winograd
        self.winograd4 = winograd4
        self.templates = tuple(t for t in self.templates
                               if (pooled_backward or t != POOLED) and (winograd or t != WINOGRAD))

    def plans_winograd(self, g) -> bool:
        """A 3x3 conv at stride 1, undilated, in one group, with WINOGRAD_MIN_CHANNELS or more
        input channels and filters, and at least one whole 2x2 tile of output."""
        return (self.winograd and g.groups == 1 and (g.kh, g.kw) == (3, 3) and (g.stride_h, g.stride_w) == (1, 1)
                and (g.dil_h, g.dil_w) == (1, 1) and min(g.c_in, g.c_out) >= WINOGRAD_MIN_CHANNELS
                and min(g.h_out, g.w_out) >= 2)

    def winograd_tile(self, g, for_device: bool) -> int:
        """The output tile of a Winograd forward: 4 (F(4x4, 3x3)) with WINOGRAD4_MIN_CHANNELS or
        more channels in and out, WINOGRAD4_MIN_TILES or more 4x4 tiles and transformed filters
        within WINOGRAD4_MAX_FILTER_BYTES (a device's bound or the host's), else 2."""
        tiles = -(-g.h_out // 4) * -(-g.w_out // 4)
        bound = WINOGRAD4_MAX_FILTER_BYTES["device" if for_device else "host"]
        return 4 if self.winograd4 and min(g.c_in, g.c_out) >= WINOGRAD4_MIN_CHANNELS and \
            tiles >= WINOGRAD4_MIN_TILES and 36 * g.c_in * g.c_out * 4 <= bound else 2

    @staticmethod
    def plans_depthwise(g) -> bool:
        """Stride 1, one input channel per group (several groups) and a few filters per channel.
        A strided depthwise conv stays on im2col: the flat rows of the depthwise kernel read
        the input shifted, which only stride 1 can do (a stride-1 pass would compute S_H * S_W
        times the outputs needed)."""
        return ((g.stride_h, g.stride_w) == (1, 1) and g.groups == g.c_in > 1
                and g.c_out // g.groups <= DEPTHWISE_MAX_MULTIPLIER)

    def plans_pooled_backward(self, layer, input_shape) -> bool:
        """The pooled backward reads a patch channels-last, a kernel row of all the channels
        (KW * C_IN values) contiguous: so one group and no dilation along the width."""
        g = layer.geometry(input_shape)
        return self.pooled_backward and g.groups == 1 and g.dil_w == 1

    def plans_relu_epilogue(self, layer) -> bool:
        """Every conv plan can end with a relu: the forward applies it to each sample's group (or
        channel) once its sums are complete, and the backward masks that group's output gradient
        into its slot's scratch (SCRATCH_DRELU) first, or, through a maxpool, passes it only where
        the pool's output is positive (pooled_positive_only)."""
        return True

    def plan(self, request: PlanRequest) -> KernelPlan:
        g = request.layer.geometry(request.inputs[0])
        if self.plans_depthwise(g):
            return _depthwise_plan(request, g)
        k = _dims(g, request.sample_slots)
        shifted = (g.stride_h, g.stride_w) == (1, 1)
        s = {"has_bias": g.bias, "dweight_by_dots": g.c_out // g.groups < DOTS_BELOW_FILTERS,
             "din": request.input_grads[0], "positive_only": request.pooled_positive_only,
             "dweight": "weight" in request.trainable, "dbias": g.bias and "bias" in request.trainable,
             "relu": request.relu_epilogue, "winograd_din": False, "winograd_dweight": False,
             "winograd_tile": 0}
        winograd = self.plans_winograd(g)
        if shifted:
            k.update(_shifted_dims(g, k))
            s.update(padded=sum(g.pad_h) + sum(g.pad_w) > 0, wide=g.kw > 1,
                     dout_is_dpad=(k["DPAD_TOP"], k["DPAD_LEFT"], k["H_DPAD"], k["W_DPAD"]) == (0, 0, g.h_out, g.w_out))
            forward = _shifted_scratch_forward(k, s)
        if winograd:
            s["winograd_tile"] = self.winograd_tile(g, request.for_device)
            k.update(_winograd_dims(k["C_IN"], k["C_OUT"], k["H_OUT"], k["W_OUT"], tile=s["winograd_tile"]))
            forward = _winograd_scratch(k, s["winograd_tile"])
        elif not shifted:
            k.update(_im2col_dims(g))
            s["padded"] = sum(g.pad_h) + sum(g.pad_w) > 0
            forward = {"SCRATCH_PADDED": k["C_IN_PER_GROUP"] * k["H_PAD"] * k["W_PAD"] if s["padded"] else 0,
                       "SCRATCH_PATCHES": k["K_GROUP"] * k["PIXELS_OUT"]}
        if request.pooled_output is not None:
            k.update(_pooled_dims(g, request.pooled_output))
            backward, shared = _pooled_scratch(k)
        elif shifted:
            s["winograd_din"] = winograd and s["din"] and _winograd_din_fits(k)
            s["winograd_dweight"] = winograd and s["dweight"]
            if s["winograd_din"]:
                k.update(_winograd_dims(k["C_OUT"], k["C_IN"], k["H_IN"], k["W_IN"], "DIN_"))
            if s["winograd_dweight"] and s["winograd_tile"] == 4:  # F(2x2) constants of its own
                k.update(_winograd_dims(k["C_IN"], k["C_OUT"], k["H_OUT"], k["W_OUT"], "DW_"))
            backward, shared = _shifted_scratch_backward(k, s)
            if winograd and s["padded"] and not s["winograd_dweight"]:
                # the direct weight gradient's padded input, not in the forward's scratch
                backward = {"SCRATCH_PADDED": _shifted_scratch_forward(k, s)["SCRATCH_PADDED"], **backward}
        else:
            backward = {"SCRATCH_DOUT": 0 if s["dweight_by_dots"] else k["PIXELS_OUT"] * k["C_OUT_PER_GROUP"]}
            shared = {"SCRATCH_DWEIGHT_T": 0 if s["dweight_by_dots"] else k["C_OUT"] * k["K_GROUP"]}
            s["din_by_phases"] = False
            if s["din"]:
                din_dims, phases, untouched = _din_phases(g)
                s["din_by_phases"] = _phases_fill_blocks(phases)
            if s["din_by_phases"]:
                s["din_phases"], s["din_untouched"] = phases, untouched
                k.update(din_dims)
                # phases that read no padding (a 1x1 kernel) read dout itself
                s["din_dout_is_dpad"] = (din_dims["DIN_PAD_TOP"], din_dims["DIN_PAD_LEFT"], din_dims["DIN_H_DPAD"],
                                         din_dims["DIN_W_DPAD"]) == (0, 0, g.h_out, g.w_out)
                backward.update(SCRATCH_DIN_DPAD=0 if s["din_dout_is_dpad"] else
                                k["C_OUT_PER_GROUP"] * k["DIN_H_DPAD"] * k["DIN_W_DPAD"],
                                SCRATCH_DIN_PHASE=k["C_IN_PER_GROUP"] * max((p["wide"] for p in s["din_phases"]), default=0))
                shared["SCRATCH_PHASE_WEIGHTS"] = k["C_OUT"] * k["K_GROUP"]
        if request.pooled_output is None:
            backward.update(_gradient_parts(k, s), **_relu_scratch(k["C_OUT_PER_GROUP"] * k["PIXELS_OUT"], s))
        layout, forward_scratch, workspace = _layout(forward, backward, shared, request.sample_slots)
        k.update(layout)

        if winograd:  # a short last block of tile rows only where there is one
            forward_names = tuple(n for n in WINOGRAD_FORWARD if n != "LAST_BLOCK_TILES" or k[n])
            forward_names += ("HALF_W",) if s["winograd_tile"] == 2 else ("QUARTER_W",)
        else:
            forward_names = GROUPED + ("SAMPLE_SLOTS",) + (_shifted_forward_names(s) if shifted else
                                                           _im2col_names(s))
        forward_names += ("SLOT_SIZE",) if forward_scratch else ()
        forward_roles = ("out", "in", "weight", "bias") + (("slots",) if forward_scratch else ()) + ("batch",)
        if request.pooled_output is not None:
            backward_names = _pooled_backward_names(s)
            backward_roles = ("din", "dweight", "dbias", "dpool", "pool_out if positive_only", "pool_argmax",
                              "in if dweight", "weight if din", "slots", "batch")
            backward_template = POOLED
        else:
            backward_names = (_shifted_backward_names(s, k) if shifted else _im2col_backward_names(s)) + \
                ("SAMPLE_SLOTS", "SLOT_SIZE", "C_OUT", "K_GROUP", "PIXELS_OUT") + \
                (("SCRATCH_DWEIGHT_PART",) if s["dweight"] else ()) + (("SCRATCH_DBIAS_PART",) if s["dbias"] else ()) + \
                (("SCRATCH_DRELU",) if s["relu"] else ())
            backward_names = tuple(dict.fromkeys(backward_names))
            # the input only for the weight gradient: a frozen conv between trainable layers (din
            # alone) lets its input go after the forward pass (memplan.backward_reads)
            backward_roles = ("din", "dweight", "dbias", "dout", "out if relu", "in if dweight", "weight if din",
                              "slots", "batch")
            backward_template = SHIFTED if shifted else IM2COL
        # the shifted and im2col backwards write the input gradient they are first to write with `=`
        # (the im2col one by phases, zeroing each sample's first where some inputs are in no phase); the
        # pooled one always adds
        initialised = request.first_gradient_writes if request.pooled_output is None else ()
        return KernelPlan(WINOGRAD if winograd else SHIFTED if shifted else IM2COL, backward_template,
                          {n: k[n] for n in forward_names}, {n: k[n] for n in backward_names},
                          resolve_roles(forward_roles, request, s), resolve_roles(backward_roles, request, s),
                          s, workspace, forward_scratch, keeps_workspace=False,
                          initialised_grads=initialised)


def _depthwise_plan(request: PlanRequest, g) -> KernelPlan:
    """Channel c's MULTIPLIER filters read only input plane c: per sample and channel, the plane
    zero-padded into H_PAD x W_PAD is one flat row, each tap a shifted view of it, and the output
    over the "wide" pixels (H_OUT - 1) * W_PAD + W_OUT is a 1 x K_GROUP by K_GROUP x pixels product
    per filter. The padding of every scratch plane is zeroed once per sample: a channel rewrites
    only the interior."""
    k = _dims(g, request.sample_slots)
    k.update(_shifted_dims(g, k), MULTIPLIER=g.c_out // g.c_in)
    s = {"has_bias": g.bias, "din": request.input_grads[0], "dweight": "weight" in request.trainable,
         "dbias": g.bias and "bias" in request.trainable, "padded": sum(g.pad_h) + sum(g.pad_w) > 0,
         "wide": g.kw > 1, "relu": request.relu_epilogue}
    s["dout_is_dpad"] = (k["DPAD_TOP"], k["DPAD_LEFT"], k["H_DPAD"], k["W_DPAD"]) == (0, 0, g.h_out, g.w_out)
    # rows as long as the input's padded ones, dout inside: the padded output gradient read from
    # (DPAD_TOP, DPAD_LEFT) on is dout over the wide pixels, zero in the dropped columns
    s["dwide_in_dpad"] = (s["din"] and s["wide"] and not s["dout_is_dpad"] and k["W_DPAD"] == k["W_PAD"]
                          and 0 <= k["DPAD_TOP"] <= k["H_DPAD"] - g.h_out and 0 <= k["DPAD_LEFT"] <= k["W_DPAD"] - g.w_out)
    mult = k["MULTIPLIER"]
    forward = {"SCRATCH_PADDED": k["H_PAD"] * k["W_PAD"] if s["padded"] else 0,
               "SCRATCH_WIDE": k["WIDE_OUT"] if s["wide"] else 0}
    din = s["din"]
    dwide = s["dweight"] and s["wide"] and not s["dwide_in_dpad"]
    backward = {"SCRATCH_DOUT": mult * k["H_OUT"] * k["W_PAD"] if dwide else 0,
                "SCRATCH_DPAD": mult * k["H_DPAD"] * k["W_DPAD"] if din and not s["dout_is_dpad"] else 0,
                "SCRATCH_WIDE_IN": k["WIDE_IN"] if din and s["wide"] else 0, **_gradient_parts(k, s),
                **_relu_scratch(mult * k["PIXELS_OUT"], s)}
    shared = {"SCRATCH_FLIPPED": k["C_OUT"] * k["K_GROUP"] if din else 0}
    layout, forward_scratch, workspace = _layout(forward, backward, shared, request.sample_slots)
    k.update(layout)

    planes = ("C_IN", "H_IN", "W_IN", "C_OUT", "MULTIPLIER", "KH", "KW", "DIL_H", "DIL_W", "W_PAD", "K_GROUP",
              "PIXELS_OUT", "SAMPLE_SLOTS")
    padding = ("PAD_TOP", "PAD_LEFT", "H_PAD", "SCRATCH_PADDED") if s["padded"] else ()
    wide = ("WIDE_OUT", "H_OUT", "W_OUT") if s["wide"] else ()
    forward_names = planes + padding + wide + (("SCRATCH_WIDE",) if s["wide"] else ())
    forward_names += ("SLOT_SIZE",) if forward_scratch else ()
    backward_names = planes + ("SLOT_SIZE",)
    if s["dweight"]:
        backward_names += padding + wide + (("SCRATCH_DOUT",) if dwide else ())
    if din:
        backward_names += ("H_DPAD", "W_DPAD", "SCRATCH_FLIPPED") + (("SCRATCH_WIDE_IN", "WIDE_IN") if s["wide"] else ())
        backward_names += () if s["dout_is_dpad"] else ("H_OUT", "W_OUT", "DPAD_TOP", "DPAD_LEFT", "SCRATCH_DPAD")
    backward_names += (("SCRATCH_DWEIGHT_PART",) if s["dweight"] else ()) + (("SCRATCH_DBIAS_PART",) if s["dbias"] else ())
    backward_names += ("SCRATCH_DRELU",) if s["relu"] else ()
    forward_roles = ("out", "in", "weight", "bias") + (("slots",) if forward_scratch else ()) + ("batch",)
    backward_roles = ("din", "dweight", "dbias", "dout", "out if relu", "in if dweight", "weight if din", "slots",
                      "batch")
    return KernelPlan(DEPTHWISE, DEPTHWISE, {n: k[n] for n in forward_names},
                      {n: k[n] for n in dict.fromkeys(backward_names)},
                      resolve_roles(forward_roles, request, s), resolve_roles(backward_roles, request, s),
                      s, workspace, forward_scratch, keeps_workspace=False,
                      initialised_grads=request.first_gradient_writes)


def _dims(g, slots: int) -> dict[str, int]:
    cig, cog = g.c_in // g.groups, g.c_out // g.groups
    return {"C_IN": g.c_in, "H_IN": g.h_in, "W_IN": g.w_in, "C_OUT": g.c_out, "H_OUT": g.h_out, "W_OUT": g.w_out,
            "KH": g.kh, "KW": g.kw, "STRIDE_H": g.stride_h, "STRIDE_W": g.stride_w, "DIL_H": g.dil_h,
            "DIL_W": g.dil_w, "PAD_TOP": g.pad_h[0], "PAD_LEFT": g.pad_w[0], "GROUPS": g.groups,
            "C_IN_PER_GROUP": cig, "C_OUT_PER_GROUP": cog, "K_GROUP": cig * g.kh * g.kw,
            "PIXELS_OUT": g.h_out * g.w_out, "SAMPLE_SLOTS": slots}


def _shifted_dims(g, k) -> dict[str, int]:
    """A stride-1 conv reads its patch matrix in place: the input, zero-padded into H_PAD x W_PAD
    planes, shifted by each tap. The input gradient is the same kind of conv of the output
    gradient, padded into H_DPAD x W_DPAD planes, with the flipped kernel."""
    h_pad, w_pad = g.h_in + sum(g.pad_h), g.w_in + sum(g.pad_w)
    h_dpad, w_dpad = g.h_in + (g.kh - 1) * g.dil_h, g.w_in + (g.kw - 1) * g.dil_w
    return {"H_PAD": h_pad, "W_PAD": w_pad, "WIDE_OUT": (g.h_out - 1) * w_pad + g.w_out,
            "H_DPAD": h_dpad, "W_DPAD": w_dpad, "DPAD_TOP": (g.kh - 1) * g.dil_h - g.pad_h[0],
            "DPAD_LEFT": (g.kw - 1) * g.dil_w - g.pad_w[0], "WIDE_IN": (g.h_in - 1) * w_dpad + g.w_in}


WINOGRAD_FORWARD = ("C_IN", "H_IN", "W_IN", "C_OUT", "H_OUT", "W_OUT", "PAD_TOP", "PAD_LEFT", "K_GROUP", "PIXELS_OUT",
                    "TILE_ROWS", "TILES_W", "TILE_ROWS_PER_BLOCK", "TILE_BLOCK", "LAST_BLOCK_TILES", "WINO_H",
                    "WINO_W", "FILTERS_STRIDE", "IN_STRIDE", "OUT_STRIDE", "SAMPLE_SLOTS",
                    "SCRATCH_WINO_FILTERS", "SCRATCH_WINO_TAPS", "SCRATCH_WINO_PADDED", "SCRATCH_WINO_IN",
                    "SCRATCH_WINO_OUT")


def _winograd_dims(c_src: int, c_dst: int, h_dst: int, w_dst: int, prefix: str = "", tile: int = 2) -> dict[str, int]:
    """A Winograd conv of c_src planes into c_dst planes of h_dst x w_dst: tiles of tile x tile
    output pixels (2 or 4), TILE_ROWS x TILES_W of them, in blocks of whole tile rows (TILE_BLOCK
    tiles, the last block LAST_BLOCK_TILES if it is short); the source zero-padded into WINO_H x
    WINO_W planes so that every tile's (tile + 2)^2 patch lies inside, each row as its columns
    x = tile * q + phase, phase by phase, HALF_W (tile 2) or QUARTER_W (tile 4) of each. The
    names take `prefix` (the input gradient's: DIN_, the weight gradient's own: DW_)."""
    rows, cols = -(-h_dst // tile), -(-w_dst // tile)
    values = (tile + 2) ** 2  # 16 or 36 transformed values per tile
    block_tiles = WINOGRAD_BLOCK_BYTES // (values * (c_src + c_dst) * 4)
    if tile == 4:
        block_tiles = max(block_tiles, WINOGRAD4_MIN_BLOCK_TILES)
    rows_per_block = max(1, min(rows, block_tiles // cols))
    block = rows_per_block * cols
    # the 16 matrices of U, V and the products are WINOGRAD_SKEW elements further apart than their
    # size: at power-of-two sizes (64 x 64 filters) a tile's 16 values would otherwise fall in one
    # set of the L1 cache, 4 KB apart, more than it has ways (the 64-filter convs ran 3x slower)
    dims = {"TILE_ROWS": rows, "TILES_W": cols, "TILE_ROWS_PER_BLOCK": rows_per_block, "TILE_BLOCK": block,
            "LAST_BLOCK_TILES": rows % rows_per_block * cols, "WINO_H": tile * rows + 2,
            "WINO_W": tile * (cols + 1), "HALF_W" if tile == 2 else "QUARTER_W": cols + 1,
            "FILTERS_STRIDE": c_dst * c_src + WINOGRAD_SKEW,
            "IN_STRIDE": c_src * block + WINOGRAD_SKEW, "OUT_STRIDE": c_dst * block + WINOGRAD_SKEW}
    return {prefix + name: value for name, value in dims.items()}


def _winograd_din_fits(k) -> bool:
    """The input gradient, the 3x3 conv of dout padded by (DPAD_TOP, DPAD_LEFT), goes by Winograd
    too where that padding crops nothing (padding of at most 2 on each side)."""
    tiles = _winograd_dims(k["C_OUT"], k["C_IN"], k["H_IN"], k["W_IN"])
    return (k["DPAD_TOP"] >= 0 and k["DPAD_LEFT"] >= 0 and k["DPAD_TOP"] + k["H_OUT"] <= tiles["WINO_H"]
            and k["DPAD_LEFT"] + k["W_OUT"] <= tiles["WINO_W"])


WINOGRAD_DIN = ("DIN_TILE_ROWS", "DIN_TILES_W", "DIN_TILE_ROWS_PER_BLOCK", "DIN_TILE_BLOCK", "DIN_LAST_BLOCK_TILES",
                "DIN_WINO_H", "DIN_WINO_W", "DIN_HALF_W", "DIN_FILTERS_STRIDE", "DIN_IN_STRIDE", "DIN_OUT_STRIDE",
                "DPAD_TOP", "DPAD_LEFT", "H_OUT", "W_OUT", "SCRATCH_DIN_FILTERS", "SCRATCH_DIN_TAPS",
                "SCRATCH_DIN_PADDED", "SCRATCH_DIN_TILES_IN", "SCRATCH_DIN_TILES_OUT")


def _dweight_prefix(s) -> str:
    """The constants of the weight gradient by F(2x2, 3x3): the forward's own behind an F(2x2)
    forward (it reuses the forward's scratch), DW_ ones (and regions) behind an F(4x4) one."""
    return "" if s["winograd_tile"] == 2 else "DW_"


def _winograd_dweight_names(s, k) -> tuple[str, ...]:
    """The shifted backward's weight gradient by Winograd (weight_gradient_sample in
    conv2d_winograd.c.j2); a short last block of tile rows only where there is one."""
    p = _dweight_prefix(s)
    tiles = ("TILE_ROWS", "TILES_W", "TILE_ROWS_PER_BLOCK", "TILE_BLOCK", "LAST_BLOCK_TILES", "WINO_H", "WINO_W",
             "HALF_W", "FILTERS_STRIDE", "IN_STRIDE", "OUT_STRIDE")
    regions = ("SCRATCH_WINO_PADDED", "SCRATCH_WINO_IN", "SCRATCH_WINO_OUT") if not p else \
        ("SCRATCH_DW_PADDED", "SCRATCH_DW_TILES_IN", "SCRATCH_DW_TILES_OUT")
    names = ("PAD_TOP", "PAD_LEFT", "H_OUT", "W_OUT") + tuple(p + n for n in tiles) + regions + \
        ("SCRATCH_DOUT", "SCRATCH_DU_SUM")
    return tuple(n for n in names if n != p + "LAST_BLOCK_TILES" or k[n])


def _winograd_scratch(k, tile: int) -> dict[str, int]:
    """Per slot: the transformed filters U, one filter's taps transposed, the padded input, and one
    block's transformed input tiles V and products: (tile + 2)^2 matrices of each."""
    values = (tile + 2) ** 2
    return {"SCRATCH_WINO_FILTERS": values * k["FILTERS_STRIDE"], "SCRATCH_WINO_TAPS": 9 * k["C_IN"],
            "SCRATCH_WINO_PADDED": k["C_IN"] * k["WINO_H"] * k["WINO_W"],
            "SCRATCH_WINO_IN": values * k["IN_STRIDE"], "SCRATCH_WINO_OUT": values * k["OUT_STRIDE"]}


def _pooled_dims(g, pool_output) -> dict[str, int]:
    """The input, zero-padded, channels-last: HWC_H x HWC_W x C_IN; kernel rows of TAP_ROW values
    padded to ROW_PAD (whole vectors: the weights' padding lanes are zero)."""
    pool_pixels = 1
    for d in pool_output[1:]:
        pool_pixels *= d
    return {"POOL_PIXELS": pool_pixels,
            "HWC_H": max(g.h_in + g.pad_h[0], (g.h_out - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1),
            "HWC_W": max(g.w_in + g.pad_w[0], (g.w_out - 1) * g.stride_w + g.kw),
            "TAP_ROW": g.kw * g.c_in, "ROW_PAD": -(-g.kw * g.c_in // ROW_LANES) * ROW_LANES}


def _shifted_scratch_forward(k, s) -> dict[str, int]:
    return {"SCRATCH_PADDED": k["C_IN_PER_GROUP"] * k["H_PAD"] * k["W_PAD"] if s["padded"] else 0,
            "SCRATCH_WIDE": k["C_OUT_PER_GROUP"] * k["WIDE_OUT"] if s["wide"] else 0}


def _shifted_scratch_backward(k, s):
    if s["winograd_dweight"]:  # the output gradient channels-last over whole tiles, the batch's sum
        p = _dweight_prefix(s)
        dweight = ({"SCRATCH_DOUT": 4 * k[p + "TILE_ROWS"] * k[p + "TILES_W"] * k["C_OUT"]},
                   {"SCRATCH_DU_SUM": 16 * k[p + "FILTERS_STRIDE"]})
        if p:  # behind an F(4x4) forward, regions of its own (else the forward's)
            dweight[0].update(SCRATCH_DW_PADDED=k["C_IN"] * k["DW_WINO_H"] * k["DW_WINO_W"],
                              SCRATCH_DW_TILES_IN=16 * k["DW_IN_STRIDE"], SCRATCH_DW_TILES_OUT=16 * k["DW_OUT_STRIDE"])
    else:
        dweight = ({"SCRATCH_DOUT": k["WIDE_OUT"] * k["C_OUT_PER_GROUP"]},
                   {"SCRATCH_DWEIGHT_T": 0 if s["dweight_by_dots"] else k["C_OUT"] * k["K_GROUP"]})
    if s["winograd_din"]:  # groups == 1
        backward = {**dweight[0],
                    "SCRATCH_DIN_PADDED": k["C_OUT"] * k["DIN_WINO_H"] * k["DIN_WINO_W"],
                    "SCRATCH_DIN_TILES_IN": 16 * k["DIN_IN_STRIDE"], "SCRATCH_DIN_TILES_OUT": 16 * k["DIN_OUT_STRIDE"]}
        shared = {"SCRATCH_DIN_FILTERS": 16 * k["DIN_FILTERS_STRIDE"], "SCRATCH_DIN_TAPS": 9 * k["C_OUT"],
                  **dweight[1]}
        return backward, shared
    cig, cog = k["C_IN_PER_GROUP"], k["C_OUT_PER_GROUP"]
    backward = {**dweight[0],
                "SCRATCH_DPAD": 0 if s["dout_is_dpad"] else cog * k["H_DPAD"] * k["W_DPAD"],
                "SCRATCH_WIDE_IN": cig * k["WIDE_IN"] if s["wide"] else 0}
    shared = {"SCRATCH_FLIPPED": k["C_OUT"] * k["K_GROUP"], **dweight[1]}
    return backward, shared


def _gradient_parts(k, s) -> dict[str, int]:
    """Per slot: one sample's weight gradient (laid out as the batch's: transposed unless by dots,
    16 transformed matrices by Winograd) and bias gradient, added to the batch's in sample order,
    so the sums are the same at any slot count (and so at any thread count)."""
    dweight = 16 * k[_dweight_prefix(s) + "FILTERS_STRIDE"] if s.get("winograd_dweight") else k["C_OUT"] * k["K_GROUP"]
    return {"SCRATCH_DWEIGHT_PART": dweight if s["dweight"] else 0,
            "SCRATCH_DBIAS_PART": k["C_OUT"] if s["dbias"] else 0}


def _relu_scratch(values: int, s) -> dict[str, int]:
    """With a relu epilogue, per slot: the masked output gradient of one sample's group (or, in
    the depthwise plan, channel), `values` long."""
    return {"SCRATCH_DRELU": values} if s["relu"] else {}


def _pooled_scratch(k):
    # a whole-vector read of the last kernel row runs up to ROW_PAD - TAP_ROW past the image
    image = k["HWC_H"] * k["HWC_W"] * k["C_IN"] + k["ROW_PAD"] - k["TAP_ROW"]
    rows = k["C_OUT"] * k["KH"] * k["ROW_PAD"]
    backward = {"SCRATCH_IN_HWC": image, "SCRATCH_DIN_HWC": image,
                "SCRATCH_DWEIGHT_PART": rows, "SCRATCH_DBIAS_PART": k["C_OUT"]}
    return backward, {"SCRATCH_WEIGHT_HWC": rows, "SCRATCH_DWEIGHT_SUM": rows}


def _layout(forward, backward, shared, slots: int):
    """Offsets of the scratch regions: (offsets with SLOT_SIZE, the forward's scratch, the total).
    Sample slot s holds one sample's regions at s * SLOT_SIZE; the shared ones follow the slots."""
    layout, offset = {}, 0
    for name, size in forward.items():
        layout[name], offset = offset, offset + size
    forward_scratch = offset
    for name, size in backward.items():
        layout[name], offset = offset, offset + size
    layout["SLOT_SIZE"] = offset
    offset *= slots
    for name, size in shared.items():
        layout[name], offset = offset, offset + size
    return layout, forward_scratch, offset


def _shifted_forward_names(s) -> tuple[str, ...]:
    names = TAPS + ("H_PAD", "W_PAD")
    names += ("PAD_TOP", "PAD_LEFT", "SCRATCH_PADDED") if s["padded"] else ()
    return names + (("WIDE_OUT", "H_OUT", "W_OUT", "SCRATCH_WIDE") if s["wide"] else ())


def _shifted_backward_names(s, k) -> tuple[str, ...]:
    names = GROUPED
    if s["winograd_dweight"]:
        names += _winograd_dweight_names(s, k)
    else:
        names += TAPS + ("H_PAD", "W_PAD", "WIDE_OUT")
        names += ("PAD_TOP", "PAD_LEFT", "SCRATCH_PADDED") if s["padded"] else ()
        if s["dweight_by_dots"]:
            names += ("SCRATCH_DOUT", "H_OUT", "W_OUT") if s["wide"] else ()
        else:
            names += ("SCRATCH_DOUT", "SCRATCH_DWEIGHT_T", "H_OUT", "W_OUT")
    if s["winograd_din"]:
        names += tuple(n for n in WINOGRAD_DIN if n != "DIN_LAST_BLOCK_TILES" or k[n])
    elif s["din"]:
        names += TAPS + ("SCRATCH_FLIPPED", "H_DPAD", "W_DPAD")
        names += () if s["dout_is_dpad"] else ("SCRATCH_DPAD", "H_OUT", "W_OUT", "DPAD_TOP", "DPAD_LEFT")
        names += ("SCRATCH_WIDE_IN", "WIDE_IN") if s["wide"] else ()
    return tuple(dict.fromkeys(names))


def _im2col_dims(g) -> dict[str, int]:
    """The im2col conv's input, zero-padded into H_PAD x W_PAD planes: just the rows and columns
    its windows read, (H_OUT - 1) * STRIDE_H + (KH - 1) * DIL_H + 1 by the same along the width
    (at stride 1, the shifted conv's padded planes)."""
    return {"H_PAD": (g.h_out - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1,
            "W_PAD": (g.w_out - 1) * g.stride_w + (g.kw - 1) * g.dil_w + 1}


def _im2col_names(s) -> tuple[str, ...]:
    """The constants of im2col_planes (the patch matrix of a sample and group, its padded input
    first if the conv pads)."""
    names = TAPS + ("STRIDE_H", "STRIDE_W", "H_OUT", "W_OUT", "SCRATCH_PATCHES")
    return names + (("PAD_TOP", "PAD_LEFT", "H_PAD", "W_PAD", "SCRATCH_PADDED") if s["padded"] else ())


def _im2col_backward_names(s) -> tuple[str, ...]:
    names = GROUPED + _im2col_names(s)
    names += WINDOWS if s["din"] and not s["din_by_phases"] else ()  # col2im's
    names += () if s["dweight_by_dots"] else ("SCRATCH_DOUT", "SCRATCH_DWEIGHT_T")
    if s["din_by_phases"]:
        names += DIN_PHASED + (() if s["din_dout_is_dpad"] else ("DIN_PAD_TOP", "DIN_PAD_LEFT", "SCRATCH_DIN_DPAD"))
    return names


DIN_PHASED = ("DIN_H_DPAD", "DIN_W_DPAD", "SCRATCH_DIN_PHASE", "SCRATCH_PHASE_WEIGHTS")


def _phases_fill_blocks(phases) -> bool:
    """Whether the phases' products fill their blocks of columns: each phase's wide pixels fill
    whole blocks of PHASE_COLUMN_BLOCK columns to PHASED_DIN_MIN_FILL or more. Where they do not
    (small output planes), the patch matrix's gradient and col2im waste less."""
    return bool(phases) and all(p["wide"] >= PHASED_DIN_MIN_FILL * -(-p["wide"] // PHASE_COLUMN_BLOCK) * PHASE_COLUMN_BLOCK
                                for p in phases)


def _din_phases_1d(n_in: int, k: int, stride: int, dil: int, pad: int) -> list[dict[str, int]]:
    """The input gradient along one dimension, by phases. Input index y reads output index
    o = (y + pad - t * dil) / stride through tap t wherever that divides exactly, so the inputs with
    (y + pad) % stride == r take the taps t with t * dil % stride == r: t = t0 + m * tap_step
    (tap_step = stride / gcd(stride, dil), m < taps), which read o = Y - m * o_step, Y = (y + pad -
    t0 * dil) / stride, o_step = dil / gcd. Inputs y = first + i * stride, i < n, are a stride-1
    correlation of the output gradient with those taps, flipped. A phase with inputs and no taps
    (taps == 0: a 1x1 kernel at stride 2) gives them no gradient."""
    g = math.gcd(stride, dil)
    tap_step, o_step = stride // g, dil // g
    phases = []
    for r in range(stride):
        first = (r - pad) % stride  # the inputs of residue r: first, first + stride, ... < n_in
        n = len(range(first, n_in, stride))
        taps = range(next((t for t in range(k) if t * dil % stride == r), k), k, tap_step)
        if n == 0:
            continue
        phase = {"taps": len(taps), "first": first, "n": n}
        if taps:
            y_lo = (first + pad - taps[0] * dil) // stride  # exact: first + pad = t0 * dil (mod stride)
            phase.update(t0=taps[0], tap_step=tap_step, o_step=o_step, o_first=y_lo - (len(taps) - 1) * o_step,
                         o_last=y_lo + n - 1)
        phases.append(phase)
    return phases


def _din_phases(g) -> tuple[dict[str, int], tuple[dict[str, int], ...], bool]:
    """A strided conv's input gradient as one stride-1 correlation per phase (_din_phases_1d, a pair
    of phases of the height and the width), each a product of its taps of the weight, flipped
    and transposed ([C_IN_PER_GROUP, C_OUT_PER_GROUP x taps], SCRATCH_PHASE_WEIGHTS), by the
    output gradient read in place: zero-padded into DIN_H_DPAD x DIN_W_DPAD planes (DIN_PAD_TOP,
    DIN_PAD_LEFT) that hold every phase's reads, each tap a shifted view of them, over the "wide"
    pixels (n_h - 1) * DIN_W_DPAD + n_w of the phase. Its inputs are every stride-th row and column
    of the input gradient from (first_h, first_w) on. Where col2im added the patch matrix's
    gradient back tap by tap, every input gradient element is written once. Returns the
    constants, the phases, and whether some inputs are in no phase (their gradient is zero)."""
    rows = _din_phases_1d(g.h_in, g.kh, g.stride_h, g.dil_h, g.pad_h[0])
    cols = _din_phases_1d(g.w_in, g.kw, g.stride_w, g.dil_w, g.pad_w[0])
    rows_with, cols_with = [p for p in rows if p["taps"]], [p for p in cols if p["taps"]]
    untouched = len(rows_with) < len(rows) or len(cols_with) < len(cols)
    pad_top = max([0] + [-p["o_first"] for p in rows_with])
    pad_left = max([0] + [-p["o_first"] for p in cols_with])
    h_dpad = pad_top + max([g.h_out] + [p["o_last"] + 1 for p in rows_with])
    w_dpad = pad_left + max([g.w_out] + [p["o_last"] + 1 for p in cols_with])
    phases, weights = [], 0
    for ph in rows_with:
        for pw in cols_with:
            taps = ph["taps"] * pw["taps"]
            phases.append({
                "kh0": ph["t0"], "kh_step": ph["tap_step"], "taps_h": ph["taps"], "dout_step_h": ph["o_step"],
                "kw0": pw["t0"], "kw_step": pw["tap_step"], "taps_w": pw["taps"], "dout_step_w": pw["o_step"],
                "first_h": ph["first"], "n_h": ph["n"], "first_w": pw["first"], "n_w": pw["n"],
                "wide": (ph["n"] - 1) * w_dpad + pw["n"], "weights": weights,
                "dpad_offset": (ph["o_first"] + pad_top) * w_dpad + pw["o_first"] + pad_left})
            weights += g.groups * (g.c_in // g.groups) * (g.c_out // g.groups) * taps
    dims = {"DIN_PAD_TOP": pad_top, "DIN_PAD_LEFT": pad_left, "DIN_H_DPAD": h_dpad, "DIN_W_DPAD": w_dpad}
    return dims, tuple(phases), untouched


def _pooled_backward_names(s) -> tuple[str, ...]:
    names = ("C_IN", "H_IN", "W_IN", "C_OUT", "W_OUT", "KH", "KW", "STRIDE_H", "STRIDE_W", "DIL_H", "PAD_TOP",
             "PAD_LEFT", "POOL_PIXELS", "HWC_W", "TAP_ROW", "ROW_PAD", "SAMPLE_SLOTS", "SLOT_SIZE",
             "SCRATCH_IN_HWC", "SCRATCH_DIN_HWC", "SCRATCH_DWEIGHT_PART", "SCRATCH_DBIAS_PART",
             "SCRATCH_DWEIGHT_SUM")
    return names + (("SCRATCH_WEIGHT_HWC",) if s["din"] else ())

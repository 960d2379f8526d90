"""Worked numeric examples from the course notes, as plain data.

Every example is a dict so that any implementation can be fed with it:

    name      short identifier
    op        "conv2d" | "conv1d" | "maxpool2d" | "relu_maxpool2d" | "softmax"
    x         input, float64, NCHW (1, C, H, W)  -- or (1, C, L) for conv1d,
              (1, K) for softmax
    w, b      conv weights (F, C, KH, KW) / (F, C, K) and bias (F,) or None
    stride    (sh, sw) for 2-D ops, int for conv1d
    pad       (top, bottom, left, right) for 2-D ops, (left, right) for conv1d
    dilation  (dh, dw) / int;  groups: int
    kernel    (kh, kw) for pooling
    y         the full expected output (same layout as the op's output), or
              None when the notes only give some entries (then the dict also
              has output_shape)
    y_entries {index tuple into the output: expected value} -- the entries
              quoted in the notes (always present; for full outputs it holds
              the entries the notes single out, if any)
    atol      tolerance to compare with (0 means exact)

The notes print images as H x W per channel; channel c of the notes is
x[0, c] here.  ``ALL_EXAMPLES`` lists every example.
"""

import numpy as np


def _a(v):
    return np.array(v, dtype=np.float64)


# (a) cs231n "convolution over volume" demo: 5x5x3 input, two 3x3x3 filters,
#     padding 1, stride 2 -> 3x3x2.
CS231N_CONV_VOLUME = dict(
    name="cs231n_conv_volume",
    op="conv2d",
    x=_a([[
        [[2, 1, 1, 1, 0], [2, 1, 1, 2, 2], [2, 1, 1, 0, 0], [1, 2, 0, 2, 2], [0, 2, 0, 1, 0]],
        [[0, 0, 1, 1, 2], [1, 2, 1, 1, 0], [0, 0, 2, 0, 2], [2, 0, 0, 0, 2], [0, 2, 2, 1, 1]],
        [[0, 2, 0, 2, 1], [0, 0, 2, 1, 2], [0, 0, 1, 0, 2], [1, 2, 2, 0, 2], [2, 0, 1, 1, 1]],
    ]]),
    w=_a([
        [[[1, -1, -1], [-1, -1, -1], [1, -1, 1]],      # W0, channel 0
         [[-1, 1, -1], [0, 1, 1], [1, -1, 1]],         # W0, channel 1
         [[1, 0, 0], [-1, 1, 0], [-1, 0, 0]]],         # W0, channel 2
        [[[1, 0, -1], [1, 1, 0], [-1, 0, 1]],          # W1, channel 0
         [[1, -1, 1], [-1, 0, 1], [0, -1, 0]],         # W1, channel 1
         [[0, 0, 0], [-1, 1, -1], [-1, 0, 1]]],        # W1, channel 2
    ]),
    b=_a([1, 0]),
    stride=(2, 2),
    pad=(1, 1, 1, 1),
    dilation=(1, 1),
    groups=1,
    y=_a([[
        [[-2, 2, 1], [-7, 0, 3], [2, 4, 3]],
        [[0, 0, -4], [4, 2, 1], [0, 1, 0]],
    ]]),
    y_entries={},
    atol=0.0,
)

# (b) sharpening kernel on a 5x5 image.  The notes quote only some entries.
#     no padding:  out[0,0] = 5*99  - (102+103+103+98) = 89
#                  out[0,1] = 5*103 - (100+99+101+104) = 111
#     padding 1:   out[0,0] = 5*105 - (102+103)        = 320
#                  out[1,0] = 5*103 - (105+99+101)     = 210
_SHARPEN_IMAGE = _a([[[[105, 102, 100, 97, 96],
                       [103, 99, 103, 101, 102],
                       [101, 98, 104, 102, 100],
                       [99, 101, 106, 104, 99],
                       [104, 104, 104, 100, 98]]]])
_SHARPEN_KERNEL = _a([[[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]]])

SHARPEN_VALID = dict(
    name="sharpen_valid", op="conv2d",
    x=_SHARPEN_IMAGE, w=_SHARPEN_KERNEL, b=None,
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=None, output_shape=(1, 1, 3, 3),
    y_entries={(0, 0, 0, 0): 89.0, (0, 0, 0, 1): 111.0},
    atol=0.0,
)

SHARPEN_SAME = dict(
    name="sharpen_pad1", op="conv2d",
    x=_SHARPEN_IMAGE, w=_SHARPEN_KERNEL, b=None,
    stride=(1, 1), pad=(1, 1, 1, 1), dilation=(1, 1), groups=1,
    y=None, output_shape=(1, 1, 5, 5),
    y_entries={(0, 0, 1, 0): 210.0, (0, 0, 0, 0): 320.0},
    atol=0.0,
)

# (c) edge detectors on 8x8 step images -> 6x6.
_VSTEP = np.zeros((1, 1, 8, 8))
_VSTEP[..., :, 0:4] = 10
_VSTEP[..., :, 4:8] = 100
_HSTEP = np.zeros((1, 1, 8, 8))
_HSTEP[..., 0:4, :] = 10
_HSTEP[..., 4:8, :] = 100

_VEDGE_OUT = np.zeros((1, 1, 6, 6))
_VEDGE_OUT[..., :, 2:4] = 270
_HEDGE_OUT = np.zeros((1, 1, 6, 6))
_HEDGE_OUT[..., 2:4, :] = 270

VERTICAL_EDGE = dict(
    name="vertical_edge", op="conv2d",
    x=_VSTEP, w=_a([[[[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]]]), b=None,
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=_VEDGE_OUT, y_entries={}, atol=0.0,
)

HORIZONTAL_EDGE = dict(
    name="horizontal_edge", op="conv2d",
    x=_HSTEP, w=_a([[[[-1, -1, -1], [0, 0, 0], [1, 1, 1]]]]), b=None,
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=_HEDGE_OUT, y_entries={}, atol=0.0,
)

# (d) cross-correlation vs convolution on a 3x3 image with a 3x3 filter.
#     cross-correlation: 1*1 + 2*5 + 1*7 + 2*8 = 34
#     convolution (kernel flipped in both axes): 1*9 + 2*5 + 1*3 + 2*2 = 26
_XCORR_IMAGE = _a([[[[1, 0, 0], [0, 2, 0], [1, 2, 0]]]])
_XCORR_FILTER = _a([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]])

CROSS_CORRELATION = dict(
    name="cross_correlation", op="conv2d",
    x=_XCORR_IMAGE, w=_XCORR_FILTER, b=None,
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=_a([[[[34]]]]), y_entries={}, atol=0.0,
)

# true convolution == conv2d (cross-correlation) with the flipped filter
TRUE_CONVOLUTION = dict(
    name="true_convolution_via_flipped_filter", op="conv2d",
    x=_XCORR_IMAGE, w=_XCORR_FILTER[:, :, ::-1, ::-1].copy(), b=None,
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=_a([[[[26]]]]), y_entries={}, atol=0.0,
)

# (e) max pool 2x2 stride 2.
MAXPOOL_2X2 = dict(
    name="maxpool_2x2_s2", op="maxpool2d",
    x=_a([[[[0, 0, 14, 82], [149, 32, 0, 0], [28, 53, 64, 44], [39, 120, 133, 99]]]]),
    kernel=(2, 2), stride=(2, 2), pad=(0, 0, 0, 0),
    y=_a([[[[149, 82], [120, 133]]]]), y_entries={}, atol=0.0,
)

# (f) max pool 3x3 stride 1.
MAXPOOL_3X3 = dict(
    name="maxpool_3x3_s1", op="maxpool2d",
    x=_a([[[[0, 0, 25, 14, 82],
            [149, 32, 31, 0, 0],
            [111, 200, 20, 135, 10],
            [28, 53, 20, 64, 44],
            [39, 120, 210, 13, 99]]]]),
    kernel=(3, 3), stride=(1, 1), pad=(0, 0, 0, 0),
    y=_a([[[[200, 200, 135], [200, 200, 135], [210, 210, 210]]]]),
    y_entries={}, atol=0.0,
)

# (g) exercise: ReLU then max pool 2x2 stride 1.
#     ReLU( [[35,20,20,3],[1,-1,21,-3],[21,7,15,22],[-2,22,22,29]] )
#         = [[35,20,20,3],[1, 0,21, 0],[21,7,15,22],[ 0,22,22,29]]
#     2x2 windows, stride 1 (rows r..r+1, cols c..c+1):
#       r=0: max(35,20,1,0)=35   max(20,20,0,21)=21   max(20,3,21,0)=21
#       r=1: max(1,0,21,7)=21    max(0,21,7,15)=21    max(21,0,15,22)=22
#       r=2: max(21,7,0,22)=22   max(7,15,22,22)=22   max(15,22,22,29)=29
RELU_MAXPOOL_EXERCISE = dict(
    name="relu_then_maxpool_2x2_s1", op="relu_maxpool2d",
    x=_a([[[[35, 20, 20, 3], [1, -1, 21, -3], [21, 7, 15, 22], [-2, 22, 22, 29]]]]),
    kernel=(2, 2), stride=(1, 1), pad=(0, 0, 0, 0),
    relu_out=_a([[[[35, 20, 20, 3], [1, 0, 21, 0], [21, 7, 15, 22], [0, 22, 22, 29]]]]),
    y=_a([[[[35, 21, 21], [21, 21, 22], [22, 22, 29]]]]),
    y_entries={}, atol=0.0,
)

# (h) 1-D filter F2 = (-1, +1, -1), 'same' padding (1 each side), stride 1.
#     The notes do not print the input; the binary 8-pixel signal below is the
#     ONLY binary input giving the quoted outputs (checked by brute force over
#     all 2^8 binary signals in test_reference.py).  Over the reals it is not
#     unique: the 8x8 system has rank 7, null vector (1,1,0,-1,-1,0,1,1).
#     e.g. out[0] = -1*0(pad) + 1*0 - 1*1 = -1,  out[4] = -1*1 + 1*0 - 1*1 = -2.
_F2_INPUT = _a([[[0, 1, 1, 1, 0, 1, 0, 0]]])
_F2 = _a([[[-1, 1, -1]]])

FILTER_1D_NO_BIAS = dict(
    name="filter1d_F2_no_bias", op="conv1d",
    x=_F2_INPUT, w=_F2, b=None,
    stride=1, pad=(1, 1), dilation=1, groups=1,
    y=_a([[[-1, 0, -1, 0, -2, 1, -1, 0]]]), y_entries={}, atol=0.0,
)

FILTER_1D_BIAS = dict(
    name="filter1d_F2_bias_0.5", op="conv1d",
    x=_F2_INPUT, w=_F2, b=_a([0.5]),
    stride=1, pad=(1, 1), dilation=1, groups=1,
    y=_a([[[-0.5, 0.5, -0.5, 0.5, -1.5, 1.5, -0.5, 0.5]]]), y_entries={}, atol=0.0,
)

# (i) 3-channel exercise: 6x6x3 input, one 3x3x3 filter, bias 7, no padding,
#     stride 1 -> 4x4.  The notes ask for (column, row), 1-based:
#       (4,4) -> out[row 3, col 3] = 9
#       (3,2) -> out[row 1, col 2] = -3
#       (2,4) -> out[row 3, col 1] = 22
#     Hand calculation of (4,4): window rows 3..5, cols 3..5 (0-based)
#       ch0 [[2,2,0],[0,3,1],[1,2,0]] . f0 = 0 + (3*4) + 0           = 12
#       ch1 [[1,3,3],[0,2,0],[0,5,3]] . f1 = (-1-6) + (2*2) + (-5)   = -8
#       ch2 [[1,2,4],[0,2,3],[0,0,0]] . f2 = (-2*2) + (2*1) + 0      = -2
#       12 - 8 - 2 + 7 (bias) = 9
#     The full map (computed with the reference, recorded for convenience) is
#       [[35,20,19,24],[1,1,-3,-3],[22,7,22,22],[-2,22,13,9]].
THREE_CHANNEL_EXERCISE = dict(
    name="three_channel_exercise", op="conv2d",
    x=_a([[
        [[1, 2, 0, 2, 1, 2], [3, 2, 6, 0, 3, 0], [0, 0, 0, 1, 0, 1],
         [1, 3, 4, 2, 2, 0], [0, 2, 2, 0, 3, 1], [5, 3, 6, 1, 2, 0]],
        [[1, 2, 4, 3, 0, 1], [0, 4, 3, 2, 1, 5], [2, 0, 5, 2, 0, 2],
         [7, 2, 0, 1, 3, 3], [2, 0, 4, 0, 2, 0], [1, 6, 3, 0, 5, 3]],
        [[1, 0, 2, 3, 0, 1], [0, 4, 5, 2, 3, 2], [2, 0, 6, 0, 0, 2],
         [0, 2, 4, 1, 2, 4], [2, 6, 2, 0, 2, 3], [2, 0, 3, 0, 0, 0]],
    ]]),
    w=_a([[
        [[0, 0, 1], [3, 4, 0], [0, 0, -1]],
        [[-1, -2, 0], [0, 2, 0], [2, -1, 0]],
        [[0, -2, 0], [-1, 1, 0], [0, -1, 0]],
    ]]),
    b=_a([7]),
    stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1,
    y=_a([[[[35, 20, 19, 24], [1, 1, -3, -3], [22, 7, 22, 22], [-2, 22, 13, 9]]]]),
    y_entries={(0, 0, 3, 3): 9.0, (0, 0, 1, 2): -3.0, (0, 0, 3, 1): 22.0},
    atol=0.0,
)

# (j) softmax of logits (5, 6, 1, 2), quoted to 4 decimals.
SOFTMAX_EXAMPLE = dict(
    name="softmax_5_6_1_2", op="softmax",
    x=_a([[5, 6, 1, 2]]),
    y=_a([[0.2641, 0.7179, 0.0048, 0.0131]]),
    y_entries={}, atol=1e-4,
)

CONV2D_EXAMPLES = [
    CS231N_CONV_VOLUME, SHARPEN_VALID, SHARPEN_SAME, VERTICAL_EDGE,
    HORIZONTAL_EDGE, CROSS_CORRELATION, TRUE_CONVOLUTION, THREE_CHANNEL_EXERCISE,
]
CONV1D_EXAMPLES = [FILTER_1D_NO_BIAS, FILTER_1D_BIAS]
POOL_EXAMPLES = [MAXPOOL_2X2, MAXPOOL_3X3, RELU_MAXPOOL_EXERCISE]
ALL_EXAMPLES = CONV2D_EXAMPLES + CONV1D_EXAMPLES + POOL_EXAMPLES + [SOFTMAX_EXAMPLE]

"""The int8 kernel plans (cnncc/quantize/kernels.py): every kernel and every tail form of its blocks
is selected by some shape here and equals the NumPy integer reference bit for bit; the arena counts
the largest plan's scratch; and the requantization the kernels share (rows and per-lane tiles, written
to vectorise) equals arith.requantize at the extremes of the int32 range. Compiled with the strict
flags of quant_cases (-std=c99 -pedantic-errors -Werror -Wconversion) and, for the arithmetic, also
with -O3 -march=native, where the loops are vectorised."""
import subprocess

import numpy as np
import pytest

from cnncc.build import find_compiler
from cnncc.quantize import arith
from cnncc.check import check_net
from cnncc.quantize.graph import build_graph
from cnncc.quantize.kernels import (DIRECT_PLANES_MAX, FILTER_BLOCK, PIXEL_BLOCK, SHIFTED_FILTER_BLOCK,
                                    SHIFTED_LANES)
from cnncc.quantize.layout import plan_layout
from cnncc.spec import load_spec
from quant_cases import STRICT, assert_bit_exact, int8_case, single_spec


def conv(**fields):
    return {"name": "conv", "type": "conv2d", **fields}


# (input shape, layer, the kernel the plan must choose, what the case exercises)
CASES = [
    ((5, 9, 12), conv(filters=5, groups=5, kernel=[2, 3], bias=False), "shifted", "depthwise, no padding"),
    ((4, 12, 12), conv(filters=4, groups=4, kernel=3, padding="same", dilation=2), "shifted",
     "depthwise, padded, dilated"),
    ((2, 10, 8), conv(filters=6, groups=2, kernel=3, padding=1, activation="relu"), "shifted",
     "groups of one input channel and three filters (a filter block of 3)"),
    ((1, 15, 10), conv(filters=5, kernel=[4, 3], padding=[2, 1]), "shifted",
     "a short last block of rows and of filters"),
    ((1, 5, 520), conv(filters=3, kernel=[1, 3], padding=[0, 1]), "shifted", "a row longer than SHIFTED_LANES"),
    ((6, 17, 16), conv(filters=5, kernel=3, padding=1), "shifted",
     "54 taps on 272 pixels: tap pairs across channels, padded, a filter tail"),
    ((33, 16, 16), conv(filters=4, kernel=1, bias=False), "shifted", "1x1 with 33 channels: an odd last tap"),
    ((3, 60, 9), conv(filters=2, kernel=[2, 5], dilation=[3, 1]), "shifted",
     "30 taps, dilated, unpadded, a short last block of rows"),
    ((5, 6, 6), conv(filters=9, kernel=1), "shifted", "1x1 with few input channels"),
    ((6, 11, 9), conv(filters=6, groups=6, kernel=3, padding="same", stride=2, dilation=2), "direct",
     "depthwise, padded, strided, dilated"),
    ((5, 29, 12), conv(filters=5, groups=5, kernel=3, stride=[2, 1]), "direct",
     "depthwise, strided, no padding, a short last block of rows"),
    ((4, 7, 9), conv(filters=7, kernel=3), "conv", "a short last block of pixels (35) and of filters (7)"),
    ((40, 6, 6), conv(filters=9, kernel=1), "conv", "1x1"),
    ((4, 9, 11), conv(filters=6, kernel=1, stride=2), "conv", "1x1, strided"),
    ((6, 9, 10), conv(filters=6, groups=2, kernel=3, padding="same", dilation=2, stride=[1, 2]), "conv",
     "groups of three filters, dilation, padding, stride"),
    ((1, 13, 11), conv(filters=16, kernel=[4, 3], stride=2, padding="same"), "conv",
     "one input channel but 16 filters: the patches"),
    ((1, 80, 80), conv(filters=4, kernel=3, padding=1, stride=2), "conv",
     "padded planes above DIRECT_PLANES_MAX: the patches instead"),
    ((4, 3, 3), conv(filters=5, kernel=3), "conv", "one output pixel (a pixel block of 1)"),
]


def _plan(shape, layer):
    graph = build_graph(check_net(load_spec(single_spec(shape, layer))))
    return plan_layout(graph).kernels[graph.ops[0].name], graph.ops[0].dims


@pytest.mark.parametrize("shape, layer, kernel, what", CASES, ids=[case[3] for case in CASES])
def test_each_kernel_and_tail_is_bit_exact(shape, layer, kernel, what, build_dir):
    q = int8_case(single_spec(shape, layer), build_dir, seed=len(what))
    plan = q.layout.kernels[q.graph.ops[0].name]
    assert plan.template == kernel, what
    assert_bit_exact(q, seed=len(what))


def test_the_cases_reach_every_block_form():
    """The shapes above exercise every kernel's tails (so block sizes that would leave one
    untested show up here)."""
    forms = set()
    for shape, layer, kernel, _ in CASES:
        plan, d = _plan(shape, layer)
        c = plan.consts
        forms.add((plan.template, "padded" if d["PADDED"] else "unpadded"))
        if plan.template == "conv":
            forms.add(("conv", "pixel tail", bool(c["PIXELS"] % c["PIXEL_BLOCK"])))
            forms.add(("conv", "filter tail", bool(d["C_OUT_PER_GROUP"] % c["FILTER_BLOCK"])))
            forms.add(("conv", "one pixel", c["PIXEL_BLOCK"] == 1))
        else:
            forms.add((plan.template, "row tail", bool(d["H_OUT"] % c["ROW_BLOCK"])))
            forms.add((plan.template, "one row", c["ROW_BLOCK"] == 1))
        if plan.template == "shifted":
            forms.add(("shifted", "filter tail", bool(d["C_OUT_PER_GROUP"] % c["FILTER_BLOCK"])))
    wanted = {(k, p) for k in ("shifted", "direct", "conv") for p in ("padded", "unpadded")}
    wanted |= {("conv", t, b) for t in ("pixel tail", "filter tail", "one pixel") for b in (True, False)}
    wanted |= {("shifted", t, b) for t in ("row tail", "one row", "filter tail") for b in (True, False)}
    wanted |= {("direct", "row tail", b) for b in (True, False)}
    assert wanted <= forms, sorted(wanted - forms)
    assert PIXEL_BLOCK > 1 and FILTER_BLOCK > 1 and SHIFTED_FILTER_BLOCK > 1
    assert 81 * 81 > DIRECT_PLANES_MAX and 522 > SHIFTED_LANES


def test_a_strided_conv1d_with_one_input_channel_runs_directly(build_dir):
    layer = {"name": "conv", "type": "conv1d", "filters": 3, "kernel": 5, "padding": "same", "stride": 2}
    q = int8_case(single_spec((1, 37), layer), build_dir)
    assert q.layout.kernels["conv"].template == "direct"
    assert_bit_exact(q)


def test_the_arena_counts_the_largest_plan_scratch(build_dir):
    spec = single_spec((1, 12, 12),
                       conv(name="first", filters=4, kernel=3, padding=1),  # shifted: 12 + 2 rows of 14
                       conv(name="second", filters=20, kernel=3, padding=1),  # conv: 4 patches of 36 bytes
                       {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 3})
    q = int8_case(spec, build_dir)
    plans = q.layout.kernels
    assert plans["first"].template == "shifted" and plans["first"].scratch_bytes == (12 + 2) * 14
    assert plans["second"].template == "conv" and plans["second"].scratch_bytes == PIXEL_BLOCK * 4 * 9
    assert q.layout.scratch_bytes == max(p.scratch_bytes for p in plans.values()) == (12 + 2) * 14
    assert q.layout.arena_bytes == q.layout.activation_bytes + (12 + 2) * 14
    assert f"_ARENA_SIZE {q.layout.arena_bytes} " in q.sources.header
    assert_bit_exact(q)


def _requantize_cases(rng, rows: int, width: int):
    """x, multiplier, shift [rows * width], each row of `width` sharing its multiplier and shift,
    with the int32 extremes and the one overflow of the doubling high multiply among them."""
    n = rows * width
    x = rng.integers(arith.INT32_MIN, arith.INT32_MAX, n, endpoint=True)
    x[:8] = [arith.INT32_MIN, arith.INT32_MAX, 0, -1, 1, arith.INT32_MIN + 1, 1 << 30, -(1 << 30)]
    small = rng.random(n) < 0.5  # values an accumulator usually holds
    x[small] = rng.integers(-(1 << 20), 1 << 20, int(small.sum()))
    multiplier = rng.integers(1 << 30, arith.INT32_MAX, rows, endpoint=True)
    multiplier[:4] = [arith.INT32_MIN, arith.INT32_MAX, 0, 1 << 30]
    shift = rng.integers(-31, arith.MAX_SHIFT, rows, endpoint=True)
    shift[:4] = [0, -31, arith.MAX_SHIFT, -1]
    return x, np.repeat(multiplier, width), np.repeat(shift, width)


def _c_array(ctype: str, name: str, values) -> str:
    items = ", ".join(f"{ctype}({int(v)})" if int(v) != arith.INT32_MIN else f"{ctype}(-2147483647 - 1)"
                      for v in values)
    return f"static const {ctype.strip('()')} {name}[] = {{{items}}};"


@pytest.mark.parametrize("flags", [STRICT, ("-O3", "-march=native", "-std=c99", "-Wall", "-Wextra", "-Werror")],
                         ids=["strict -O2", "-O3 -march=native"])
def test_the_requantization_loops_equal_tflites_arithmetic(flags, build_dir, tmp_path):
    q = int8_case(single_spec((2, 6, 6), conv(filters=4, kernel=3)), build_dir)
    rows, width, zero = 64, 24, 5
    x, multiplier, shift = _requantize_cases(np.random.default_rng(7), rows, width)
    n = rows * width
    (tmp_path / f"{q.sources.name}.h").write_text(q.sources.header)
    (tmp_path / f"{q.sources.name}.c").write_text(q.sources.source)
    driver = "\n".join([
        f'#include "{q.sources.name}.c"', "#include <stdio.h>",
        _c_array("(int32_t)", "xs", x), _c_array("(int32_t)", "multipliers", multiplier),
        _c_array("(int32_t)", "shifts", shift),
        "int main(void)", "{",
        f"    static int32_t biases[{n}];", f"    static int8_t row[{n}], lanes[{n}];", "    int i;",
        f"    for (i = 0; i < {rows}; ++i) {{",
        f"        q_requantize_row(row + i * {width}, xs + i * {width}, {width}, 0, multipliers[i * {width}],",
        f"                         shifts[i * {width}], {zero}, -128, 127);", "    }",
        f"    q_requantize_lanes(lanes, xs, {n}, biases, multipliers, shifts, {zero}, -128, 127);",
        f"    for (i = 0; i < {n}; ++i) {{",
        '        printf("%ld %d %d\\n", (long)q_requantize(xs[i], multipliers[i], shifts[i]), row[i], lanes[i]);',
        "    }", "    return 0;", "}", ""])
    (tmp_path / "driver.c").write_text(driver)
    binary = tmp_path / "driver"
    subprocess.run([find_compiler(), *flags, "-o", str(binary), str(tmp_path / "driver.c")], check=True,
                   capture_output=True, text=True)
    out = np.array([line.split() for line in subprocess.run([str(binary)], check=True, capture_output=True,
                                                             text=True).stdout.splitlines()], np.int64)
    expected = arith.requantize(x, multiplier, shift)
    assert np.array_equal(out[:, 0], expected)
    clamped = np.clip(expected + zero, -128, 127)
    # zero + requantized is an int32 sum in C (as in TFLite): compare where it cannot overflow (it can
    # only near INT32_MAX, which no multiplier quantize_multiplier makes reaches for int8 outputs)
    fits = expected + zero <= arith.INT32_MAX
    assert fits.mean() > 0.9
    assert np.array_equal(out[fits, 1], clamped[fits]) and np.array_equal(out[fits, 2], clamped[fits])
    assert len(np.unique(clamped)) > 50  # not saturated everywhere

"""The host build's int8 kernels (the vector kernel set, cnncc/quantize/vector_kernels.py) equal the NumPy
integer reference bit for bit, in each of their three forms (templates/int8/vector.c.j2): AVX-512 VNNI
(-march=native here), AVX2 (-mavx2 -mfma -mno-avx512f) and plain C (the baseline target), all built
with -Werror and run on this machine; and their requantization equals TFLite's arithmetic at the
extremes of the int32 range, left shifts included.

Each ISA is one program: every case is a one-layer spec rendered as its own model (its own
translation unit, CASEi_run), all linked with one driver, so the cases cost one compiler call per ISA.
"""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cnncc.build import find_compiler
from cnncc.quantize import arith, reference
from cnncc.quantize.layout import VECTOR
from cnncc.quantize.render import render_sources
from cnncc.quantize.vector_kernels import DEPTHWISE_LANES, DOT4_FILTER_BLOCK, DOT4_MAX_TAPS, DOT4_VECTORS, LANES
from quant_cases import int8_parts, random_int8, single_spec

WARNINGS = ("-std=c99", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wshadow")
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()) if Path(
    "/proc/cpuinfo").exists() else set()
NATIVE_FORM = "avx512vnni" if {"avx512_vnni", "avx512bw"} <= CPU_FLAGS else "avx2" if "avx2" in CPU_FLAGS else "plain"
# (the form its lanes must take, its flags, an instruction its program must contain, one it must not)
ISAS = {
    "native": (NATIVE_FORM, ("-O3", "-march=native"), "vpdpbusd" if NATIVE_FORM == "avx512vnni" else None, None),
    "avx2": ("avx2", ("-O3", "-mavx2", "-mfma", "-mno-avx512f"), "vpmaddwd", "zmm"),
    "plain": ("plain", ("-O2",), None, "ymm"),
}
SAMPLES = 3


def conv(**fields):
    return {"name": "conv", "type": "conv2d", **fields}


# (input shape, layer, the kernel the vector plan must choose, what the case exercises)
CASES = [
    ((5, 9, 12), conv(filters=5, groups=5, kernel=[2, 3], bias=False), "depthwise", "depthwise, no padding"),
    ((4, 12, 12), conv(filters=4, groups=4, kernel=3, padding="same", dilation=2), "depthwise",
     "depthwise, padded, dilated"),
    ((2, 41, 30), conv(filters=2, groups=2, kernel=3, padding=1), "depthwise",
     "depthwise, a short last block of rows (32-byte pitch: 16 rows a block)"),
    ((1, 3, 530), conv(filters=1, kernel=[1, 5], padding=[1, 2]), "depthwise",
     "depthwise, rows longer than DEPTHWISE_LANES (one row a block)"),
    ((64, 25, 5), conv(filters=64, groups=64, kernel=3, padding="same", activation="relu"), "depthwise",
     "DS-CNN's depthwise conv"),
    ((6, 11, 9), conv(filters=6, groups=6, kernel=3, padding="same", stride=2), "direct",
     "strided depthwise: the portable direct rows"),
    ((64, 25, 5), conv(filters=64, kernel=1, activation="relu"), "dot4", "DS-CNN's pointwise conv: one run"),
    ((33, 16, 16), conv(filters=4, kernel=1, bias=False), "dot4", "1x1, 33 channels: one tap in the last quad"),
    ((6, 7, 9), conv(filters=7, kernel=1), "dot4", "1x1, 6 channels: two taps in the last quad, 63 pixels"),
    ((3, 10, 8), conv(filters=9, kernel=[1, 1], stride=2), "dot4", "1x1 strided: runs of one output row"),
    ((4, 7, 9), conv(filters=7, kernel=3), "dot4", "unpadded 3x3, 35 pixels, a filter tail (7)"),
    ((16, 32, 32), conv(filters=16, kernel=3, padding=1, activation="relu"), "dot4",
     "ResNet-8's stage-1 conv: padded, 16 pixel blocks"),
    ((6, 9, 10), conv(filters=6, groups=2, kernel=3, padding="same", dilation=2, stride=[1, 2]), "dot4",
     "groups of three filters, dilation, padding, stride"),
    ((1, 49, 10), conv(filters=64, kernel=[10, 4], stride=2, padding="same"), "dot4",
     "DS-CNN's first conv: one input channel, 40 taps, strided, padded"),
    ((3, 11, 13), conv(filters=5, kernel=3, padding=[0, 2], stride=[2, 1]), "dot4",
     "27 taps (three in the last quad), padding in width only"),
    ((4, 3, 3), conv(filters=5, kernel=3), "dot4", "one output pixel"),
    ((1, 32, 32), conv(filters=6, kernel=5), "dot4",
     "LeNet-5's conv1: rows of 28 pixels cut by the 64-pixel blocks into runs of 8 to 28 (16-pixel "
     "interleaves, overlapping tails, byte-by-byte runs), 25 taps"),
    ((2, 40), {"name": "conv", "type": "conv1d", "filters": 6, "kernel": 5, "padding": "same", "dilation": 2},
     "dot4", "conv1d, padded, dilated"),
    ((3, 9, 7), [conv(name="a", filters=4, kernel=3, padding=1), conv(name="b", filters=4, kernel=1, inputs=["input"]),
                 {"name": "sum", "type": "add", "inputs": ["a", "b"]}, {"name": "sum_relu", "type": "relu"}], "add_tables",
     "a 2-input add with a relu: 252 elements, a short last block of lanes"),
    ((2, 8, 8), [conv(name="a", filters=3, kernel=3, padding=1), conv(name="b", filters=3, kernel=1, inputs=["input"]),
                 conv(name="c", filters=3, kernel=1, inputs=["input"]),
                 {"name": "sum", "type": "add", "inputs": ["a", "b", "c"]}], "add_tables", "a 3-input add"),
]


def _case(i: int, shape, layer):
    spec = single_spec(shape, *(layer if isinstance(layer, list) else [layer]))
    spec["name"] = f"case{i}"
    _, graph, layout, values = int8_parts(spec, i, VECTOR)
    return graph, layout, values


def _requantize_inputs(rng):
    """x, multiplier, shift of 64 rows of 16 lanes: the int32 extremes, the one overflow of the doubling high
    multiply, and every shift from -31 to 30 (left shifts take the plain lanes, the others the vectors)."""
    rows = 64
    x = rng.integers(arith.INT32_MIN, arith.INT32_MAX, rows * LANES, endpoint=True)
    x[:8] = [arith.INT32_MIN, arith.INT32_MAX, 0, -1, 1, arith.INT32_MIN + 1, 1 << 30, -(1 << 30)]
    small = rng.random(x.size) < 0.5
    x[small] = rng.integers(-(1 << 20), 1 << 20, int(small.sum()))
    multiplier = rng.integers(1 << 30, arith.INT32_MAX, rows, endpoint=True)
    multiplier[:4] = [arith.INT32_MIN, arith.INT32_MAX, 0, 1 << 30]
    shift = np.arange(rows) % (arith.MAX_SHIFT + 32) - 31
    return x, multiplier, shift


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
%(includes)s

static void *read_all(const char *path, size_t bytes)
{
    void *data = calloc(bytes ? bytes : 1, 1);
    FILE *f = fopen(path, "rb");
    if (!data || !f || fread(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %%s\n", path);
        exit(1);
    }
    fclose(f);
    return data;
}

static void write_all(const char *path, const void *data, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot write %%s\n", path);
        exit(1);
    }
    fclose(f);
}

#define RUN(name, upper) { \
    int8_t *in = read_all(#name ".in", (size_t)SAMPLES * upper##_INPUT_SIZE); \
    int8_t *out = calloc((size_t)SAMPLES * upper##_OUTPUT_SIZE, 1); \
    int8_t *arena = calloc(upper##_ARENA_SIZE, 1); \
    const int8_t *weights = read_all(#name ".weights", upper##_WEIGHTS_SIZE); \
    const int32_t *words = read_all(#name ".words", sizeof(int32_t) * upper##_WORDS_SIZE); \
    name##_run(out, in, SAMPLES, arena, weights, words); \
    write_all(#name ".out", out, (size_t)SAMPLES * upper##_OUTPUT_SIZE); }

enum { SAMPLES = %(samples)d, ROWS = %(rows)d };

int main(void)
{
    const int32_t *xs = read_all("requantize.x", sizeof(int32_t) * ROWS * Q_LANES);
    const int32_t *multipliers = read_all("requantize.multiplier", sizeof(int32_t) * ROWS);
    const int32_t *shifts = read_all("requantize.shift", sizeof(int32_t) * ROWS);
    static int8_t requantized[ROWS * Q_LANES], from_registers[ROWS * Q_LANES];
    int row;
    for (row = 0; row < ROWS; ++row) { /* every other row as a short tail of row %% 16 + 1 lanes */
        const int n = row %% 2 ? row %% Q_LANES + 1 : Q_LANES;
        const q_requant rq = q_requant_of(0, multipliers[row], shifts[row], 5, -128, 127);
        q_requantize_lanes16(requantized + row * Q_LANES, xs + row * Q_LANES, n, rq);
        q_requantize_acc(from_registers + row * Q_LANES, q_lanes_load(xs + row * Q_LANES), n, rq);
    }
    write_all("requantize.out", requantized, sizeof requantized);
    write_all("requantize_acc.out", from_registers, sizeof from_registers);
%(runs)s
    printf("%%s\n", Q_LANES_FORM);
    return 0;
}
"""


def _write(work: Path, name: str, array, dtype) -> None:
    np.ascontiguousarray(array, dtype).tofile(work / name)


@pytest.fixture(scope="module")
def cases():
    built = [_case(i, shape, layer) for i, (shape, layer, _, _) in enumerate(CASES)]
    inputs = [random_int8(graph.tensors[graph.input].shape, SAMPLES, seed=i) for i, (graph, _, _) in enumerate(built)]
    return built, inputs


def test_the_plans_choose_each_kernel_and_reach_every_block_form(cases):
    built, _ = cases
    forms = set()
    for (graph, layout, _), (_, _, kernel, what) in zip(built, CASES):
        op = [op for op in graph.ops if op.kind in ("conv", "add")][-1]  # the case's last conv or add
        plan, d = layout.kernels[op.name], op.dims
        assert plan.template == kernel, what
        c = plan.consts
        forms.add((kernel, "padded" if d.get("PADDED") else "unpadded"))
        if kernel == "dot4":
            forms.add(("dot4", "pixel tail", bool(c["PIXELS"] % c["PIXEL_BLOCK"])))
            forms.add(("dot4", "filter tail", bool(d["C_OUT_PER_GROUP"] % c["FILTER_BLOCK"])))
            forms.add(("dot4", "short last quad", d["K_GROUP"] % 4))
            forms.add(("dot4", "one run", c["SEGMENT"] == c["PIXELS"]))
            forms.add(("dot4", "full blocks", c["VECTORS"] == DOT4_VECTORS))
        elif kernel == "depthwise":
            forms.add(("depthwise", "row tail", bool(d["H_OUT"] % c["ROW_BLOCK"])))
            forms.add(("depthwise", "one row", c["ROW_BLOCK"] == 1))
    wanted = {(k, p) for k in ("dot4", "depthwise") for p in ("padded", "unpadded")} | {("add_tables", "unpadded")}
    wanted |= {("dot4", t, b) for t in ("pixel tail", "filter tail", "one run", "full blocks") for b in (True, False)}
    wanted |= {("dot4", "short last quad", k) for k in range(4)}
    wanted |= {("depthwise", t, b) for t in ("row tail", "one row") for b in (True, False)}
    assert wanted <= forms, sorted(wanted - forms)
    assert DOT4_FILTER_BLOCK > 1 and 530 > DEPTHWISE_LANES


def test_filters_longer_than_dot4s_tap_table_take_the_portable_conv():
    """dot4's table of tap offsets is on the stack: DOT4_MAX_TAPS taps bound it, and a longer filter
    plans as the portable conv kernel (which the portable kernels' tests cover)."""
    at_cap = DOT4_MAX_TAPS // 9
    for channels, kernel in ((at_cap, "dot4"), (at_cap + 1, "conv")):
        graph, layout, _ = _case(0, (channels, 3, 3), conv(filters=2, kernel=3))
        op = [op for op in graph.ops if op.kind == "conv"][-1]
        assert (op.dims["K_GROUP"] <= DOT4_MAX_TAPS) == (kernel == "dot4")
        assert layout.kernels[op.name].template == kernel


@pytest.mark.parametrize("isa", list(ISAS))
def test_each_isa_is_bit_exact(isa, cases, tmp_path):
    form, flags, present, absent = ISAS[isa]
    built, inputs = cases
    sources, runs, includes = [], [], []
    for i, ((graph, layout, values), samples) in enumerate(zip(built, inputs)):
        rendered = render_sources(graph, layout, values, f"case{i}")
        (tmp_path / f"case{i}.h").write_text(rendered.header)
        (tmp_path / f"case{i}.c").write_text(rendered.source)
        _write(tmp_path, f"case{i}.in", samples, np.int8)
        _write(tmp_path, f"case{i}.weights", values.weights, np.int8)
        _write(tmp_path, f"case{i}.words", values.words, np.int32)
        includes.append(f'#include "case{i}.h"')
        runs.append(f"    RUN(case{i}, CASE{i})")
        if i:
            sources.append(str(tmp_path / f"case{i}.c"))
    x, multiplier, shift = _requantize_inputs(np.random.default_rng(11))
    for name, array in (("x", x), ("multiplier", multiplier), ("shift", shift)):
        _write(tmp_path, f"requantize.{name}", array, np.int32)
    # case0's translation unit is the driver's (its static lanes and requantization are the ones tested alone)
    driver = DRIVER % {"includes": '#include "case0.c"\n' + "\n".join(includes[1:]), "runs": "\n".join(runs),
                       "samples": SAMPLES, "rows": len(multiplier)}
    (tmp_path / "driver.c").write_text(driver)
    binary = tmp_path / "driver"
    subprocess.run([find_compiler(), *flags, *WARNINGS, "-I", str(tmp_path), "-o", str(binary),
                    str(tmp_path / "driver.c"), *sources], check=True, capture_output=True, text=True)
    ran = subprocess.run([str(binary)], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert ran.stdout.split() == [form]
    if present or absent:
        asm = subprocess.run(["objdump", "-d", str(binary)], check=True, capture_output=True, text=True).stdout
        assert present is None or present in asm
        assert absent is None or absent not in asm
    for i, ((graph, layout, values), samples, (_, _, _, what)) in enumerate(zip(built, inputs, CASES)):
        got = np.fromfile(tmp_path / f"case{i}.out", np.int8).reshape(SAMPLES, -1)
        expected = reference.run(graph, values, layout, samples)[graph.output]
        mismatches = int((got != expected).sum())
        assert mismatches == 0, f"{what}: {mismatches} of {got.size} int8 outputs differ from the integer reference"
        assert len(np.unique(got)) > min(8, got.size // 2), what  # the data exercises the range
    # the same arithmetic from memory (q_requantize_lanes16) and from a q_lanes (q_requantize_acc, dot4's)
    requantized = np.fromfile(tmp_path / "requantize.out", np.int8).reshape(len(multiplier), LANES)
    from_registers = np.fromfile(tmp_path / "requantize_acc.out", np.int8).reshape(len(multiplier), LANES)
    expected = np.clip(arith.requantize(x, np.repeat(multiplier, LANES), np.repeat(shift, LANES)) + 5, -128, 127)
    expected = expected.reshape(len(multiplier), LANES)
    for row in range(len(multiplier)):
        n = row % LANES + 1 if row % 2 else LANES
        fits = arith.requantize(x[row * LANES:row * LANES + n], multiplier[row], shift[row]) + 5 <= arith.INT32_MAX
        assert np.array_equal(requantized[row, :n][fits], expected[row, :n][fits]), (row, shift[row])
        assert np.array_equal(from_registers[row, :n][fits], expected[row, :n][fits]), (row, shift[row])
    assert len(np.unique(expected)) > 50

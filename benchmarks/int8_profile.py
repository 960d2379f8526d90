"""Where an int8 model's batch-1 time goes: the Python boundary and each op's kernel.

    PYTHONPATH=. python benchmarks/int8_profile.py specs/ds_cnn.yaml [more specs] [--seconds S]

Each spec is quantized as benchmarks/bench.py's int8 column does (init(0) weights, 64 random
calibration samples) and timed at batch 1, one thread:
- from Python: Model.predict (float32, vector backend), QuantizedModel.predict and its parts
  (predict_int8 alone: the C call with its checks);
- in C, without Python: NAME_forward, and every op's kernel on its own (a driver that includes the
  rendered NAME.c, so the static kernels are in reach; the median of many calls of each).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import cnncc
from cnncc.bench import call_latency, random_batch
from cnncc.quantize.render import forward_calls

CALIBRATION = 64  # bench.py's INT8_CALIBRATION
CFLAGS = ("-std=c99", "-O3", "-march=native")  # the Python module's optimisation (options.DEFAULT_CFLAGS)

DRIVER = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "%(model)s.c"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

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

enum { CALLS = %(calls)d };
static double samples[CALLS];
static int8_t arena_memory[%(upper)s_ARENA_SIZE + 64];

int main(void)
{
    const int8_t *weights = read_all("weights.bin", %(weight_bytes)d);
    const int32_t *words = read_all("words.bin", %(word_bytes)d);
    int8_t *arena = arena_memory;
    int i;
    memcpy(arena + %(upper)s_INPUT_OFFSET, read_all("input.bin", %(upper)s_INPUT_SIZE), %(upper)s_INPUT_SIZE);
#define TIME(label, statement) \
    for (i = 0; i < CALLS; ++i) { const double t0 = now(); statement; samples[i] = now() - t0; } \
    qsort(samples, CALLS, sizeof samples[0], by_value); \
    printf("%%s %%.3f\n", label, 1e6 * samples[CALLS / 2]);
    TIME("forward", %(model)s_forward(arena, weights, words))
%(ops)s
    return 0;
}
"""


def python_figures(model, qmodel, x, seconds: float) -> dict[str, float]:
    x_q = qmodel.quantize_input(x)
    q_out = qmodel.predict_int8(x_q)
    calls = {"float32 Model.predict": lambda: model.predict(x),
             "int8 QuantizedModel.predict": lambda: qmodel.predict(x),
             "  quantize_input": lambda: qmodel.quantize_input(x),
             "  predict_int8": lambda: qmodel.predict_int8(x_q),
             "  dequantize_output": lambda: qmodel.dequantize_output(q_out)}
    return {name: call_latency(call, seconds).median_us for name, call in calls.items()}


def c_figures(qmodel, x, calls: int, work: Path) -> list[tuple[str, float]]:
    model = qmodel.sources.name
    upper = model.upper()
    (work / f"{model}.c").write_text(qmodel.sources.source)
    (work / f"{model}.h").write_text(qmodel.sources.header)
    np.ascontiguousarray(qmodel.values.weights, np.int8).tofile(work / "weights.bin")
    np.ascontiguousarray(qmodel.values.words, np.int32).tofile(work / "words.bin")
    qmodel.quantize_input(x).tofile(work / "input.bin")
    ops = "\n".join(f'    TIME("{name}", {call})' for name, call in forward_calls(qmodel.graph, qmodel.layout))
    (work / "driver.c").write_text(DRIVER % {"model": model, "upper": upper, "calls": calls, "ops": ops,
                                              "weight_bytes": qmodel.values.weights.size,
                                              "word_bytes": 4 * qmodel.values.words.size})
    subprocess.run(["gcc", *CFLAGS, "-I", str(work), "-o", str(work / "driver"), str(work / "driver.c")],
                   check=True)
    out = subprocess.run([str(work / "driver")], cwd=work, check=True, capture_output=True, text=True).stdout
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])) for line in out.strip().splitlines()]


def profile(spec: str, seconds: float, calls: int, build_dir: str) -> str:
    model = cnncc.compile(spec, build_dir=build_dir).init(0)
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((CALIBRATION,) + tuple(model.input_shape)).astype(model.program.dtype)
    qmodel = model.quantize(calibration, build_dir=build_dir)
    x, _ = random_batch(model, 1, seed=0)
    lines = [f"{model.spec.name} (load {Path('/proc/loadavg').read_text().split()[0]})"]
    lines += [f"  {name:32s} {us:9.1f} us" for name, us in python_figures(model, qmodel, x, seconds).items()]
    with tempfile.TemporaryDirectory() as tmp:
        figures = c_figures(qmodel, x, calls, Path(tmp))
    kinds = {op.name: (op.kind, qmodel.layout.kernels.get(op.name)) for op in qmodel.graph.ops}
    for name, us in figures:
        kind, plan = kinds.get(name, ("", None))
        what = plan.template if plan is not None else kind
        lines.append(f"  C {name:30s} {us:9.2f} us  {what}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--seconds", type=float, default=1.0, help="per Python figure")
    parser.add_argument("--calls", type=int, default=2000, help="per C figure")
    parser.add_argument("--build-dir", default="build")
    args = parser.parse_args(argv)
    for spec in args.specs:
        print(profile(spec, args.seconds, args.calls, args.build_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

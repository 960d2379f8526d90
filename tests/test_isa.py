"""Every vector width the kernels are written for, whatever this machine has.

The vector backend sizes its vectors and register blocks by the target's ISA (templates/gemm.c.j2:
64-byte vectors and 12-row blocks with AVX-512, 32-byte with AVX, 16-byte otherwise). The module
tests build with -march=native, so they exercise one width only. Here the kernel-variant group of
test_layers.py (every conv variant and block form, dense wide and narrow) is built for each width
with its -m flags under -Werror; a width this CPU can run is also run, forward and backward
(float64 and float32, against the NumPy reference), and one it cannot run is compiled
only. The 16-byte fallback runs on any x86-64 machine.

The width -march=native picks here is not built again: test_layers.py builds the same group for it
at the users' optimisation (-O3) under -Werror and runs it against the reference and finite
differences (native_width below says which width that is).
"""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from cnncc.build import compiler_command
from test_layers import (TOL_BACKWARD32, TOL_BACKWARD64, TOL_FORWARD32, TOL_FORWARD64, VARIANT_BATCH, VARIANT_CASES,
                         group_spec, kink_safe, run_group, shape_tag, stable_seed)

WARNINGS = ("-Wall", "-Wextra", "-Werror")
# name -> (the CPU flags it needs in /proc/cpuinfo, its compiler flags)
WIDTHS = {
    "16-byte fallback": ((), ("-mno-avx", "-mno-avx2", "-mno-fma")),
    "avx2": (("avx2", "fma"), ("-mavx2", "-mfma")),
    "avx512": (("avx512f", "avx512vl", "avx512dq", "avx512bw", "fma"),
               ("-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2", "-mfma")),
}

pytestmark = [pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the -m flags here are x86's"),
              pytest.mark.slow]


@lru_cache(maxsize=1)
def native_width() -> str:
    """The width templates/gemm.c.j2 takes under -march=native (by the macros it tests)."""
    macros = subprocess.run([*compiler_command(), "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                            capture_output=True, text=True, check=True).stdout.split()
    return "avx512" if "__AVX512F__" in macros else "avx2" if "__AVX__" in macros else "16-byte fallback"


# the others: test_layers.test_every_kernel_variant_and_block_form builds and runs the native one
OTHER_WIDTHS = [width for width in WIDTHS if width != native_width()]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


# float32 vectors hold twice float64's lanes, so each width takes other block forms and tails in
# each precision (float32 at 32 bytes: 8 lanes in 6-row blocks, which no float64 build has)
TOLERANCES = {"float64": (TOL_FORWARD64, TOL_BACKWARD64), "float32": (TOL_FORWARD32, TOL_BACKWARD32)}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("shape", list(VARIANT_CASES), ids=shape_tag)
@pytest.mark.parametrize("width", OTHER_WIDTHS)
def test_every_vector_width_compiles_warning_free_and_runs_where_the_cpu_can(width, shape, dtype, build_dir):
    needed, flags = WIDTHS[width]
    runs = set(needed) <= cpu_flags()
    cases = VARIANT_CASES[shape]
    rng = np.random.default_rng(stable_seed("widths", shape))
    # run_group compiles (with these flags replacing -march=native) and, only if asked to, runs
    cflags = ("-O1", *flags, *WARNINGS)
    name = f"widths_{width.split('-')[0]}_{shape_tag(shape)}_{dtype}"
    if not runs:
        import cnncc

        model = cnncc.compile(group_spec(cases, dtype, "pre", name), build_dir=build_dir, cflags=cflags)
        assert model.module is not None  # compiled and loaded, never called: this CPU lacks the ISA
        return
    # against the reference only: test_layers.py checks the reference against finite differences
    result = run_group(shape, dtype, "pre", build_dir, cflags=cflags, cases=cases, name=name,
                       xs=kink_safe(rng, (VARIANT_BATCH,) + shape), fd=False)
    pooled = {op.layer for op in result.model.program.ops if op.pooled}
    assert pooled == {case.id for case in cases if case.id.startswith("pooled_")}
    forward, backward = TOLERANCES[dtype]
    for case in cases:
        r = result.cases[case.id]
        assert max(r.forward_infer, r.forward_train) <= forward, f"{width} {case.id} forward"
        assert r.input_grads <= backward, f"{width} {case.id} input gradient: {r.input_grads:.3g}"
        assert max(r.param_grads.values()) <= backward, f"{width} {case.id}: {r.param_grads}"

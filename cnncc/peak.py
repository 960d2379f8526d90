"""The machine's float32 FMA throughput, the 100% of `cnncc bench --layers`' "% of peak" column
and of benchmarks/bench.py's. templates/peak.c.j2 is built through the build cache with the
model's compiler and flags (-march=native by default), so it runs on the same vector registers as
the kernels it is compared with. For N threads, N Python threads call it at once (cffi releases
the GIL during the call) and their rates add up."""
from __future__ import annotations

import threading

from .build import build
from .codegen import Sources, environment
from .options import DEFAULT_CFLAGS

NAME = "cnncc_peak"
CDEF = "double cnncc_peak_flops(double seconds, float mul_value, float add_value, float *check);"


def _module(build_dir=None, cc: str | None = None, cflags=None):
    flags = tuple(DEFAULT_CFLAGS if cflags is None else cflags)  # a model's cflags, without OpenMP's
    source = environment().get_template("peak.c.j2").render()
    header = f"#ifndef CNNCC_PEAK_H\n#define CNNCC_PEAK_H\n{CDEF}\n#endif\n"
    return build(Sources(NAME, header, source, CDEF), build_dir, flags, cc)


def peak_gflops(threads: int = 1, seconds: float = 0.3, runs: int = 3, build_dir=None, cc: str | None = None,
                cflags=None) -> float:
    """The best of `runs` measurements of `threads` threads each multiply-adding for `seconds`:
    GFLOP/s summed over the threads."""
    if not (isinstance(threads, int) and 1 <= threads <= 256):
        raise ValueError(f"threads must be an int in 1..256, got {threads!r}")
    if not 0 < seconds <= 60 or not (isinstance(runs, int) and 1 <= runs <= 100):
        raise ValueError("seconds must be in (0, 60] and runs an int in 1..100")
    module = _module(build_dir, cc, cflags)
    best = 0.0
    for _ in range(runs):
        rates = [0.0] * threads

        def work(index: int) -> None:
            check = module.ffi.new("float *")
            rates[index] = module.lib.cnncc_peak_flops(seconds, 0.9999, 0.0001, check)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, sum(rates) / 1e9)
    return best

"""CompileOptions: every decision about how a spec is compiled, made in one place.

Threads decide both the sample slots lowering gives each conv (lowering.lower) and the OpenMP flags
of the build; the backend decides the templates and kernel plans; cc and cflags decide the
build. Everything downstream reads these fields and decides nothing of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -std=c99 turns floating-point contraction off; -ffp-contract=fast lets a*b + c become one FMA
# (a single rounding, never less accurate), and -fno-math-errno lets sqrt be one instruction
# (it still returns NaN for a negative input; only the errno side effect goes). None of
# -ffast-math's licences: NaN and infinity stay detectable. -mprefer-vector-width=512: GCC 12
# vectorises plain loops (batchnorm, add, the depthwise conv) at 256 bits on the Intel AVX-512
# CPUs it tunes for (it already uses 512 on Zen 4, and AVX2 machines have no wider registers); the
# products' explicit vectors are 512 bits anyway. Same bits (no reduction reorders); DS-CNN's
# batch-1 forward 75-76 -> 70-71 us on an Intel Xeon (AVX-512, 1 thread).
DEFAULT_CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fno-math-errno")
# threads > 1 adds this: large matrix products split over the threads. Not the default: an OpenMP
# build compiles each product twice (threaded and constant-specialised), about twice as slowly,
# and one thread runs best without the runtime.
OPENMP_FLAGS = ("-fopenmp",)
MAX_THREADS = 256  # set_threads / compile(threads=): libgomp cannot start arbitrarily many (10**6 crashed)
DTYPES = ("float32", "float64")


def checked_int(name: str, value, low: int, high: int) -> int:
    """value, if it is an integer (not a bool) in [low, high]; else a ValueError naming the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        kind = "a positive integer" if low == 1 else "an integer"
        raise ValueError(f"{name} must be {kind} in [{low}, {high:,}], got {value!r}")
    return int(value)


@dataclass(frozen=True)
class CompileOptions:
    threads: int = 1  # > 1: an OpenMP build whose convs process that many samples at once
    cc: str | None = None  # the C compiler; None: $CC, then gcc, cc, clang
    cflags: tuple[str, ...] | None = None  # None: DEFAULT_CFLAGS
    backend: str = "vector"
    dtype: str | None = None  # overrides the spec's dtype (gradcheck compiles in float64)
    fuse: bool = True  # a relu after a batchnorm or an add runs in that op's kernels (lowering.lower)
    for_device: bool = False  # the program `cnncc emit` writes: kernel plans within a device's RAM

    def __post_init__(self):
        checked_int("threads", self.threads, 1, MAX_THREADS)
        for name in ("fuse", "for_device"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.cflags is not None:
            if isinstance(self.cflags, str) or not all(isinstance(flag, str) for flag in self.cflags):
                raise ValueError(f"cflags must be a sequence of strings, got {self.cflags!r}")
            object.__setattr__(self, "cflags", tuple(self.cflags))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        from .backends import BACKENDS  # the registry; importing it registers every backend

        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.threads > 1 and not BACKENDS[self.backend].threaded:
            raise ValueError(f"the {self.backend} backend runs on one thread: threads must be 1, got {self.threads}")

    @property
    def sample_slots(self) -> int:
        return self.threads

    @property
    def build_flags(self) -> tuple[str, ...]:
        """The compiler flags of this build (before the required and warning flags)."""
        flags = DEFAULT_CFLAGS if self.cflags is None else self.cflags
        return (*flags, *OPENMP_FLAGS) if self.threads > 1 else tuple(flags)

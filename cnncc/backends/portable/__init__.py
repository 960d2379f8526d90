"""The portable backend: strict ISO C99, the shared layer templates over scalar matrix products
(templates/portable/gemm.c.j2) written for a compiler to vectorise by itself: unit-stride inner
loops over restrict pointers, and sums split over a fixed number of partial sums. No vector types,
attributes, statement expressions, VLAs, OpenMP or headers beyond <stddef.h> <stdint.h>
<string.h> <math.h>, so any C99 compiler builds it (checked: gcc -pedantic-errors, clang
-Weverything, tcc). Its sums' order depends on the shapes alone, never on the target.

Its planners are the vector backend's, and so are its scratch layouts; the conv backward through
the maxpool after it (ir.PooledBackward) has a scalar template of its own
(templates/portable/layers/conv2d_pooled_backward.c.j2) whose loops run over the plan's kernel
rows padded to a multiple of 16 (constant trip counts a compiler vectorises at any width).
"""
from __future__ import annotations

from ..base import Backend
from ..plan import Planner
from ..vector.batchnorm import BatchNormPlanner
from ..vector.conv2d import ConvPlanner
from ..vector.dense import DensePlanner
from ..vector.generic import GenericPlanner
from ..vector.maxpool2d import MaxPoolPlanner

# What clang -Weverything reports on the portable C that is no defect of it, each with its reason:
# the one list, printed into the emitted Makefile as CLANG_WARNINGS_OFF (tests/test_portable.py
# builds with that variable).
CLANG_WARNINGS_OFF = {
    "-Wno-declaration-after-statement": "a C89 rule; C99 allows declarations after statements",
    "-Wno-sign-conversion": "kernels index with int dimensions and size_t batch offsets mixed; every "
                            "value is non-negative and below check.MAX_TENSOR_ELEMENTS",
    "-Wno-padded": "informational: the padding a compiler puts in a struct (taps, the header's "
                   "hyper-parameters), not a defect",
    "-Wno-unused-macros": "offsets are defined for every workspace, and an inference build's forward "
                          "reads only some (a conv's scratch may serve only its backward)",
    "-Wno-unused-function": "ISO C has no way to mark a static helper unused, and a network calls "
                            "only some of them (no convolution: no im2col)",
}


class PortableBackend(Backend):
    name = "portable"
    doc = "strict ISO C99 scalar kernels for any C compiler (no GNU extensions, no OpenMP)"
    template_overlay = "portable"
    threaded = False  # no OpenMP: its sample slots and products run on the calling thread
    emit_cflags = "-std=c99 -O3"
    clang_warnings_off = CLANG_WARNINGS_OFF
    # no Winograd forward: its transforms are written in vector types
    planners = {"conv2d": ConvPlanner(winograd=False), "dense": DensePlanner(), "maxpool2d": MaxPoolPlanner(),
                "batchnorm": BatchNormPlanner()}

    def planner_for(self, template: str) -> Planner:
        return self.planners.get(template) or GenericPlanner(template)

"""Where everything of an int8 graph lives: the int8 weights blob, the int32 words blob, and the
int8 arena, whose tensors share memory by liveness (memplan's first fit; the network input has
a slot too, since the program's caller writes it into the arena).

Every figure here follows from the graph alone, so `cnncc check --int8` reports exactly what
the emitted program and the Python module allocate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..memplan import Lifetime, first_fit
from .graph import QGraph
from .kernels import KernelPlan, plan_kernel
from .vector_kernels import plan_vector_kernel

PORTABLE, VECTOR = "portable", "vector"
# the kernel sets: the strict-C99 kernels of the emitted program and the board (cnncc check --int8
# counts their arena), and the host build's (QuantizedModel: compiled for this machine)
KERNEL_SETS = {PORTABLE: plan_kernel, VECTOR: plan_vector_kernel}


@dataclass(frozen=True)
class Layout:
    weight_offsets: dict[str, int]  # op name -> offset of its int8 weights (or table)
    word_offsets: dict[str, dict[str, int]]  # op name -> its int32 arrays' offsets
    weight_count: int  # int8 elements of the weights blob
    word_count: int  # int32 elements of the words blob
    tensor_offsets: dict[str, int]  # tensor name -> byte offset in the arena
    activation_bytes: int  # the planned activations
    scratch_offset: int
    scratch_bytes: int  # the largest scratch of any op's kernel plan (conv patches, padded planes), shared

    @property
    def arena_bytes(self) -> int:
        return self.activation_bytes + self.scratch_bytes

    @property
    def weight_bytes(self) -> int:
        """int8 weights and tables, and the int32 biases, multipliers and shifts (all const: flash)."""
        return self.weight_count + 4 * self.word_count

    @property
    def unshared_bytes(self) -> int:
        """The arena with one buffer per tensor (what liveness saves is the difference)."""
        return self.unshared + self.scratch_bytes

    unshared: int = 0
    kernels: dict[str, KernelPlan] = field(default_factory=dict)  # op name -> its plan (convs)
    kernel_set: str = PORTABLE  # which of KERNEL_SETS planned the kernels


def plan_layout(graph: QGraph, kernel_set: str = PORTABLE) -> Layout:
    """Where everything lives, with each op's kernel planned by `kernel_set` (PORTABLE: what `cnncc emit
    --int8` writes; VECTOR: the host build)."""
    if kernel_set not in KERNEL_SETS:
        raise ValueError(f"unknown int8 kernel set {kernel_set!r}: one of {', '.join(KERNEL_SETS)}")
    planner = KERNEL_SETS[kernel_set]
    weight_offsets, word_offsets, weights, words = {}, {}, 0, 0
    for op in graph.ops:
        if op.weight_count:
            weight_offsets[op.name], weights = weights, weights + op.weight_count
        offsets = {}
        for name, size in op.words.items():
            offsets[name], words = words, words + size
        word_offsets[op.name] = offsets
    end = len(graph.ops) - 1
    last_read = {name: i for i, op in enumerate(graph.ops) for name in op.inputs}
    last_read[graph.output] = end
    spans = [Lifetime(graph.input, graph.tensors[graph.input].size, 0, last_read.get(graph.input, 0))]
    spans += [Lifetime(op.output, graph.tensors[op.output].size, i, max(i, last_read.get(op.output, i)))
              for i, op in enumerate(graph.ops)]
    offsets = first_fit(tuple(spans))
    activations = max(offsets[s.name] + s.size for s in spans)
    kernels = {op.name: plan for op in graph.ops if (plan := planner(op)) is not None}
    scratch = max((plan.scratch_bytes for plan in kernels.values()), default=0)
    return Layout(weight_offsets, word_offsets, weights, words, offsets, activations, activations, scratch,
                  unshared=sum(s.size for s in spans), kernels=kernels, kernel_set=kernel_set)

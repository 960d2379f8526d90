"""The inference memory plan: activation tensors whose lifetimes do not overlap share memory.

Liveness runs over the forward schedule. A tensor is live from the op that writes it to
the last op that reads it; views (`flatten`, `linear`) carry their input's name, so a read
through a view keeps the underlying tensor alive; the network output stays live to the
end. An op's output is live while its inputs are read, so no kernel ever writes over its
own input (they are not written for in-place use: dropout at inference copies).

Offsets come from greedy first fit (largest tensor first, ties in schedule order, each at
the lowest offset clear of every placed tensor it is live with): deterministic, and
per sample, so `offset * batch` is a valid plan for any batch size, exactly as the
training plan addresses its tensors. The workspace follows the activations.
`cnncc emit --inference-only` renders this plan and `cnncc check` reports it.

The training plan's memory is placed here too: its workspaces (place_workspaces: what an op
keeps from forward to backward in a region of its own, every call's scratch in one shared
region) and, with frozen layers, its activations (training_layout).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .ir import Deployment, Program, Tensor


@dataclass(frozen=True)
class Lifetime:
    name: str
    size: int  # elements per sample
    first: int  # index of the op that writes it
    last: int  # index of the last op that reads it (the schedule's end for the output)

    def overlaps(self, other: "Lifetime") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    lifetimes: tuple[Lifetime, ...]
    offsets: dict[str, int]  # tensor name -> per-sample element offset in the arena
    activations_per_sample: int  # the planned arena (elements per sample)
    unshared_per_sample: int  # one buffer per tensor: the training plan's activation size
    workspace: int  # elements, independent of the batch

    def arena_size(self, batch: int) -> int:
        """Elements of the inference arena for a batch: planned activations + workspace."""
        return self.activations_per_sample * batch + self.workspace

    def unshared_size(self, batch: int) -> int:
        return self.unshared_per_sample * batch + self.workspace


def lifetimes(program: Program) -> tuple[Lifetime, ...]:
    """Every arena tensor's live range over the forward schedule, in schedule order."""
    end = len(program.ops) - 1
    last_read = {t.name: i for i, op in enumerate(program.ops) for t in op.inputs if not t.is_input}
    if not program.output.is_input:
        last_read[program.output.name] = end
    return tuple(Lifetime(op.output.name, op.output.size, i, max(i, last_read.get(op.output.name, i)))
                 for i, op in enumerate(program.ops))


FEW = 16  # live-together tensors up to which a placement loops in Python
NARROW = 64  # schedule steps up to which the placed tensors that may overlap are found by step


def first_fit(tensors: tuple[Lifetime, ...]) -> dict[str, int]:
    """Offsets: largest first, each at the lowest offset clear of every live-together tensor.

    The placed tensors live together with the next one are those whose lifetime meets its own.
    Where every lifetime is short (a chain: no placed tensor lives longer than `span` steps)
    they all start within `span` steps before it, so they are found by their first step; where
    some live long (a tree of adds keeps half its tensors live at once, which made the per-step
    lists of an earlier version cubic) one NumPy test over all the placed tensors finds them. The
    lowest gap is where a running maximum of their ends, sorted by start, first leaves room
    below the next start. O(n) work per tensor at worst, a few steps' worth in a chain."""
    order = sorted(tensors, key=lambda t: (-t.size, t.first))
    count = len(order)
    firsts, lasts = np.empty(count, np.int64), np.empty(count, np.int64)
    starts, ends = np.empty(count, np.int64), np.empty(count, np.int64)
    starting_at: dict[int, list[int]] = {}  # schedule step -> the placed tensors written there
    span = 0  # the longest lifetime placed so far, in steps
    offsets: dict[str, int] = {}
    for placed, t in enumerate(order):
        if t.last - t.first + span < NARROW:
            live = np.array([i for step in range(t.first - span, t.last + 1) for i in starting_at.get(step, ())
                             if lasts[i] >= t.first], np.int64)
        else:
            live = np.flatnonzero((firsts[:placed] <= t.last) & (lasts[:placed] >= t.first))
        offset = 0
        if 0 < live.size <= FEW:  # a chain's few neighbours: the loop itself is quicker
            for start, end in sorted(zip(starts[live].tolist(), ends[live].tolist())):
                if offset + t.size <= start:
                    break
                offset = max(offset, end)
        elif live.size:
            below = np.argsort(starts[live], kind="stable")
            start, end = starts[live][below], ends[live][below]
            reach = np.maximum.accumulate(end)  # the highest end of the tensors up to each start
            clear = np.concatenate(([0], reach[:-1]))  # the lowest offset past every earlier one
            fits = np.flatnonzero(clear + t.size <= start)
            offset = int(clear[fits[0]] if fits.size else reach[-1])
        firsts[placed], lasts[placed], starts[placed], ends[placed] = t.first, t.last, offset, offset + t.size
        starting_at.setdefault(t.first, []).append(placed)
        span = max(span, t.last - t.first)
        offsets[t.name] = offset
    return offsets


def plan(program: Program) -> MemoryPlan:
    spans = lifetimes(program)
    offsets = first_fit(spans)
    total = max((offsets[t.name] + t.size for t in spans), default=0)
    # one buffer per tensor (what the training plan of a network without frozen layers allocates)
    unshared = sum(t.size for t in spans)
    return MemoryPlan(spans, offsets, total, unshared, inference_scratch(program))


def inference_scratch(program: Program) -> int:
    """Inference keeps nothing between ops (batchnorm saves statistics only when training), so
    every op's forward scratch shares one region at the start of the workspace."""
    return max((op.forward_scratch for op in program.ops), default=0)


def inference_program(program: Program, memory: MemoryPlan, batch: int, weights: bool) -> Program:
    """The program a standalone inference build renders: tensors at their planned offsets,
    no loss (so no backward, loss or optimizer), a fixed batch and the arena's size."""
    def moved(t: Tensor) -> Tensor:
        return t if t.is_input else replace(t, offset=memory.offsets[t.name])

    ops = tuple(replace(op, inputs=tuple(moved(t) for t in op.inputs), output=moved(op.output),
                        workspace_offset=0)
                for op in program.ops)
    deployment = Deployment(inference_only=True, weights=weights, batch=batch,
                            arena_size=max(1, memory.arena_size(batch)))
    return replace(program, ops=ops, output=moved(program.output), loss=None, workspace_size=memory.workspace,
                   activation_size=memory.activations_per_sample,
                   layer_outputs={k: moved(t) for k, t in program.layer_outputs.items()},
                   deployment=deployment)


def deployment_figures(program: Program, batch: int) -> dict[str, int]:
    """What `cnncc check` reports and `cnncc emit` prints: weights (flash) and the inference
    arena (RAM) at a batch, against one buffer per tensor."""
    memory = plan(program)
    return {"weight_bytes": program.num_params * program.itemsize,
            "arena_bytes": memory.arena_size(batch) * program.itemsize,
            "arena_bytes_unshared": memory.unshared_size(batch) * program.itemsize,
            "arena_batch": batch}


def backward_reads(program: Program) -> frozenset[str]:
    """The tensors the backward pass (or the loss) reads: those its kernels take as activations
    (their plans' backward roles: an op's input, inputs or output, a fused pool's output), the
    network output and the loss's logits. The others are only read during the forward pass (a
    frozen conv that computes only its input gradient does not read its input)."""
    kept = {t.name for op in program.ops if program.has_backward(op)
            for t in _backward_activations(op) if not t.is_input}
    kept.add(program.output.name)
    if program.loss is not None:
        kept.add(program.loss.logits.name)
    return frozenset(kept)


def _backward_activations(op) -> tuple:
    """The activations an op's backward kernel reads, by its plan's roles (backends/arguments.py)."""
    roles = op.plan.backward_args
    tensors = [op.output] if "out" in roles else []
    tensors += list(op.inputs) if "ins" in roles else [op.inputs[0]] if "in" in roles else []
    if "pool_out" in roles:
        tensors.append(op.pooled.pool_output)
    return tuple(tensors)


def training_layout(program: Program) -> Program:
    """With frozen layers, the training plan of a program: the tensors backward reads keep one slot
    each (first, in schedule order), and the others, those only frozen layers that run no backward
    read, share one region planned like the inference arena (first fit over their lifetimes). The
    gradient buffer mirrors the activations, so it shrinks by the same amount; gradients are never
    written for the shared tensors (their producers run no backward). Everything else is the
    lowered program as it is: without frozen layers (every op runs backward) it is returned unchanged."""
    if program.loss is None or all(op.runs_backward for op in program.ops):
        return program
    kept = backward_reads(program)
    offsets, end = {}, 0
    for op in program.ops:
        if op.output.name in kept:
            offsets[op.output.name] = end
            end += op.output.size
    shared = tuple(t for t in lifetimes(program) if t.name not in kept)
    for name, offset in first_fit(shared).items():
        offsets[name] = end + offset
    total = end + max((offsets[t.name] - end + t.size for t in shared), default=0)

    def moved(t: Tensor) -> Tensor:
        return t if t.is_input else replace(t, offset=offsets[t.name])

    def moved_op(op):
        pooled = op.pooled and replace(op.pooled, pool_input=moved(op.pooled.pool_input),
                                       pool_output=moved(op.pooled.pool_output))
        return replace(op, inputs=tuple(moved(t) for t in op.inputs), output=moved(op.output), pooled=pooled)

    # the workspaces were placed by lowering (place_workspaces), frozen layers' included
    loss = replace(program.loss, logits=moved(program.loss.logits))
    return replace(program, ops=tuple(moved_op(op) for op in program.ops), output=moved(program.output), loss=loss,
                   activation_size=total, layer_outputs={k: moved(t) for k, t in program.layer_outputs.items()})


def place_workspaces(ops: list) -> tuple[list, int]:
    """The training plan's workspaces: (the ops with their offsets, the total). An op whose
    workspace holds something from its forward to its backward (Op.keeps_workspace: batchnorm's
    statistics) has a region of its own, one after another. Every other op's is scratch within
    one kernel call (a conv's padded planes and patch matrices, a frozen layer's forward), and
    the ops run one after another, so those all share one region after the kept ones, the size
    of the largest: at batch 1 a forward then reads and writes a few hundred KB of scratch
    again and again, not a fresh region per op (ResNet-8: 5.2 MB one after another)."""
    own, end = {}, 0
    for op in ops:
        if op.keeps_workspace and op.workspace_size:
            own[op.name], end = end, end + op.workspace_size
    shared = max((op.workspace_size for op in ops if not op.keeps_workspace), default=0)
    return [replace(op, workspace_offset=own.get(op.name, end)) if op.workspace_size else op for op in ops], \
        end + shared

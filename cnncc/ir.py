"""The IR (a Program): concrete shapes, one flat parameter buffer, an activation plan, a
forward schedule and its reverse, and each op's kernel plan. lowering.lower makes it from a
CheckedNet; codegen reads only this. A conv/dense `activation:` field becomes its own op after the
layer; `flatten` and `linear` are views of their input's memory and emit no op.
Every activation tensor has its own slot in the training plan (all are kept for backward);
its offset is per sample, so the C code addresses `acts + A_<TENSOR> * batch`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, NamedTuple, Sequence

from .backends.plan import KernelPlan
from .layers import Shape, as_chw, format_shape, numel
from .losses import LossKind, loss_kind
from .optimizers import OptimizerKind, optimizer_kind
from .spec import OptimizerSpec

DTYPE_BYTES = {"float32": 4, "float64": 8}
C_TYPES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class Tensor:
    name: str  # unique C identifier fragment
    shape: Shape  # per sample
    offset: int  # per-sample offset into the activation arena; -1 for the network input

    @property
    def size(self) -> int:
        return numel(self.shape)

    @property
    def is_input(self) -> bool:
        return self.offset < 0

    @property
    def macro(self) -> str:
        return MACRO_PREFIXES[0] + self.name.upper()

    @property
    def chw(self) -> tuple[int, int, int]:
        return as_chw(self.shape)

    def describe(self) -> str:
        return "[N, " + ", ".join(str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class ParamTensor:
    key: str  # layer.weight, as in Model.params
    shape: tuple[int, ...]
    offset: int
    trainable: bool
    init: str
    fan_in: int
    fan_out: int

    @property
    def size(self) -> int:
        return numel(self.shape)

    @property
    def macro(self) -> str:
        return "P_" + self.key.replace(".", "_").upper()


@dataclass(frozen=True)
class PooledBackward:
    """conv -> [relu] -> maxpool, with nothing else reading the conv's or relu's output: the conv's
    output gradient is nonzero only at the maximum of each pool window (and, after a relu, only
    where that maximum is positive), so the conv's backward reads the pool's output gradient and
    works at those positions alone: a quarter of the dense work behind a 2x2 pool. The pool's and
    relu's backwards are absorbed, and the two gradients between are never materialised: in
    training, the pool's forward keeps each window's argmax (as int32) in the memory of its
    input's gradient instead."""
    pool: str  # the maxpool op
    activation: str | None  # the relu op between, if any
    pool_input: Tensor  # what the pool reads: its argmax picks the position
    pool_output: Tensor  # whose gradient the conv's backward reads

    @property
    def absorbed(self) -> tuple[str, ...]:
        return (self.pool,) + ((self.activation,) if self.activation else ())


@dataclass(frozen=True)
class Op:
    name: str  # unique C identifier fragment: conv1, conv1_relu
    layer: str  # the spec layer it comes from
    kind: str
    line: int | None  # the layer's line in the spec
    inputs: tuple[Tensor, ...]
    output: Tensor
    params: dict[str, ParamTensor]  # role (weight, bias, ...) -> tensor
    input_grads: tuple[bool, ...]  # False where the input is the network input (no dX needed)
    param_count: int = 0
    pooled: PooledBackward | None = None  # a conv whose backward goes through the maxpool after it
    plan: KernelPlan | None = None  # how its kernels run on the program's backend (set once by lowering)
    workspace_offset: int = 0
    runs_backward: bool = True  # False: no trainable parameter at or before it (_prune_backward)
    # the layers this op computes too (lowering.lower), in order: the add after a batchnorm (with
    # residual), then the relu, a relu layer after it or its own `activation: relu` as <layer>_relu
    fused: tuple[str, ...] = ()
    # a batchnorm with the add after it fused in: inputs[1] is the add's other input, added to the
    # normalised value (then the relu, if fused has one after the add)
    residual: bool = False

    @property
    def relu_epilogue(self) -> bool:
        """Whether the op ends with a fused relu (the last of `fused` after any add)."""
        return len(self.fused) > int(self.residual)

    @property
    def label(self) -> str:
        """Its kind with what it computes too: conv2d+relu, batchnorm+add+relu (`cnncc ir`, `cnncc bench`)."""
        return self.kind + "+add" * self.residual + "+relu" * self.relu_epilogue

    @property
    def grad_inputs(self) -> tuple[Tensor, ...]:
        """The inputs whose gradient backward computes."""
        return tuple(t for t, needed in zip(self.inputs, self.input_grads) if needed)

    @property
    def random_stream(self) -> int:
        """The salt of the op's random numbers (dropout's mask), from its layer's name: the same
        stream however the tensors are placed or the ops fused."""
        return zlib.crc32(self.layer.encode()) & 0x7FFFFFFF

    @property
    def workspace_size(self) -> int:
        """Elements of the op's workspace, independent of the batch (its plan's)."""
        return self.plan.workspace

    @property
    def keeps_workspace(self) -> bool:
        """Its workspace holds something from one call to the next (the forward's for the backward)."""
        return self.runs_backward and self.plan.keeps_workspace

    @property
    def forward_scratch(self) -> int:
        """Leading elements of the workspace an inference forward uses, only within its call."""
        return self.plan.forward_scratch


@dataclass(frozen=True)
class Loss:
    kind: str
    logits: Tensor  # what the loss reads: the output, or a fused sigmoid's input
    fused_op: str | None  # an op whose backward the loss replaces (sigmoid before bce)
    classes: int

    @property
    def rules(self) -> LossKind:
        """The registered loss: its targets, metric and template."""
        return loss_kind(self.kind)

    @property
    def takes_labels(self) -> bool:
        """Integer class labels [batch] rather than float targets shaped like the output."""
        return self.rules.takes_labels


@dataclass(frozen=True)
class Constant:
    """What an inference build with compiled-in weights reads instead of some of an op's
    parameters: values emit derives from them (LayerKind.fold), at `offset` of NAME_constants[]."""
    op: str
    role: str  # the kernel argument it binds: batchnorm's scale, shift
    offset: int
    size: int
    folded: tuple[str, ...]  # the parameter roles it replaces

    @property
    def macro(self) -> str:
        return f"K_{self.op}_{self.role}".upper()


@dataclass(frozen=True)
class Deployment:
    """How a standalone build (`cnncc emit`) differs from the Python module's build: an
    inference-only build has a fixed batch and one static arena (memplan.py); `weights`
    declares the emitted `NAME_weights[]` in NAME.h, and `constants` the `NAME_constants[]` an
    inference build derives from them (emit.py). The default is the Python module."""
    inference_only: bool = False
    weights: bool = False
    batch: int = 0  # inference-only: the samples every forward call processes
    arena_size: int = 0  # inference-only: elements of the arena (planned activations + workspace)
    constants: tuple[Constant, ...] = ()  # inference-only with weights: in NAME_constants[]

    @property
    def constants_size(self) -> int:
        return sum(k.size for k in self.constants)

    def constants_of(self, op: str) -> tuple[Constant, ...]:
        return tuple(k for k in self.constants if k.op == op)


@dataclass(frozen=True)
class Program:
    name: str
    dtype: str
    input: Tensor
    output: Tensor
    ops: tuple[Op, ...]
    params: tuple[ParamTensor, ...]
    num_params: int
    num_trainable: int  # trainable parameters come first in the flat buffer
    activation_size: int  # elements per sample
    workspace_size: int  # elements, independent of the batch
    loss: Loss | None
    optimizer: OptimizerSpec
    layer_outputs: dict[str, Tensor] = field(default_factory=dict)
    # layer -> the layer after it fused into its op (a relu, or a batchnorm's add): the layer's own
    # output is never stored (Model.activation says so)
    fused_away: dict[str, str] = field(default_factory=dict)
    deployment: Deployment = field(default_factory=Deployment)
    sample_slots: int = 1  # see lower
    backend: str = "vector"  # cnncc/backends: whose templates render this program

    @property
    def c_type(self) -> str:
        return C_TYPES[self.dtype]

    @property
    def target_type(self) -> str:
        return "int32_t" if self.loss and self.loss.takes_labels else self.c_type

    @property
    def itemsize(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @cached_property
    def absorbed_backward(self) -> dict[str, str]:
        """Ops without a backward of their own -> the op whose backward does their part (the
        loss, for a sigmoid fused into binary cross-entropy). Cached: has_backward asks it for
        every op, and recomputing it each time made rendering quadratic in the op count."""
        return absorbed_backward({op.name: op.pooled for op in self.ops if op.pooled}, self.loss)

    @property
    def backward_ops(self) -> tuple[Op, ...]:
        """The reverse schedule, without the absorbed ops."""
        return tuple(op for op in reversed(self.ops) if self.has_backward(op))

    def has_backward(self, op: Op) -> bool:
        return has_own_backward(op, self.loss, self.absorbed_backward)

    @cached_property
    def initialised_gradients(self) -> frozenset[str]:
        """Tensors whose gradient the first backward to write it writes whole, with `=`
        (KernelPlan.initialised_grads, allowed by lowering where first_gradient_writes says so):
        nothing zeroes them first."""
        return frozenset(t.name for op in self.backward_ops for k, t in enumerate(op.inputs)
                         if op.input_grads[k] and op.plan.initialises_grad(k))

    @property
    def unmaterialised_gradients(self) -> frozenset[str]:
        """Tensors whose gradient no backward writes: those between a conv and the maxpool its
        backward goes through (PooledBackward; the pool's argmax lives in that memory)."""
        return frozenset(t for op in self.ops if op.pooled for t in (op.output.name, op.pooled.pool_input.name))

    def zeroed_ranges(self) -> list["GradientRange"]:
        """The ranges of activation gradients backward zeroes first: every tensor's but the
        unmaterialised and the initialised ones, adjacent tensors merged into one range (named
        after its first)."""
        ranges: list[GradientRange] = []
        skip = self.unmaterialised_gradients | self.initialised_gradients
        for t in sorted((op.output for op in self.ops), key=lambda t: t.offset):
            if t.name in skip or t.size == 0:
                continue
            if ranges and ranges[-1].offset + ranges[-1].size == t.offset:
                ranges[-1] = ranges[-1]._replace(last=t, size=ranges[-1].size + t.size)
            else:
                ranges.append(GradientRange(t, t, t.offset, t.size))
        return ranges

    def zeroed_gradients(self) -> list[tuple[int, int]]:
        """(per-sample offset, size) of each range of zeroed_ranges."""
        return [(r.offset, r.size) for r in self.zeroed_ranges()]

    @property
    def optimizer_rules(self) -> OptimizerKind:
        """The registered optimizer: its hyper-parameters, state and template."""
        return optimizer_kind(self.optimizer.type)

    @property
    def optimizer_state_size(self) -> int:
        return self.optimizer_rules.state_slots(self.optimizer.settings) * self.num_trainable

    def buffer_elements(self, batch: int, training: bool) -> dict[str, int]:
        """Element counts of every buffer the runtime allocates: the one source of truth for
        both the allocation and the report's memory figures."""
        sizes = {"params": self.num_params, "activations": self.activation_size * batch,
                 "workspace": self.workspace_size}
        if training:
            sizes["grads"] = self.num_trainable  # the trainable parameters come first: frozen ones get none
            sizes["grad_activations"] = self.activation_size * batch
            sizes["optimizer_state"] = self.optimizer_state_size
        return sizes

    def buffer_bytes(self, batch: int, training: bool) -> int:
        return sum(self.buffer_elements(batch, training).values()) * self.itemsize


def absorbed_backward(pooled: Mapping[str, PooledBackward], loss: Loss | None) -> dict[str, str]:
    """Program.absorbed_backward, from the pooled backwards by conv name and the loss."""
    absorbed = {name: conv for conv, p in pooled.items() for name in p.absorbed}
    if loss and loss.fused_op:
        absorbed[loss.fused_op] = "the loss"
    return absorbed


def has_own_backward(op: Op, loss: Loss | None, absorbed: Mapping[str, str]) -> bool:
    """Program.has_backward: a loss to train for, and the op neither pruned nor absorbed."""
    return loss is not None and op.runs_backward and op.name not in absorbed


def first_gradient_writes(ops: Sequence[Op], pooled: Mapping[str, PooledBackward],
                          loss: Loss | None) -> dict[str, tuple[bool, ...]]:
    """op name -> per input, whether its backward is the first in the reverse schedule to write
    that input's gradient (PlanRequest.first_gradient_writes). Activation gradients add up (+=)
    where branches meet; the first writer may write with `=` instead, and then nothing need zero
    that gradient first. The loss writes its logits' gradient before every op; an input that
    appears twice is first written by its first occurrence. Ops without a backward (pruned,
    absorbed, or no loss at all) write nothing."""
    if loss is None:
        return {}
    absorbed = absorbed_backward(pooled, loss)
    written = {loss.logits.name}
    writes = {}
    for op in reversed(ops):
        if not has_own_backward(op, loss, absorbed):
            continue
        firsts = []
        for t, needed in zip(op.inputs, op.input_grads):
            firsts.append(needed and t.name not in written)
            if needed:
                written.add(t.name)
        writes[op.name] = tuple(firsts)
    return writes


class GradientRange(NamedTuple):
    """Activation gradients zeroed together: from first's to last's, size elements per sample
    from offset. NAME.c names the size ZERO_<FIRST>."""
    first: Tensor
    last: Tensor
    offset: int
    size: int

    @property
    def macro(self) -> str:
        return MACRO_PREFIXES[2] + self.first.name.upper()


# The model header's public macros are <MODEL>_<suffix> (templates/model.h.j2, emit's
# inference header); a tensor macro A_<NAME> or workspace macro WS_<NAME> must never equal one.
PUBLIC_MACRO_SUFFIXES = ("H", "NUM_PARAMS", "NUM_TRAINABLE", "INPUT_SIZE", "OUTPUT_SIZE",
                         "ACTIVATIONS_PER_SAMPLE", "WORKSPACE_SIZE", "OPTIMIZER_STATE_SIZE", "BATCH",
                         "ARENA_SIZE", "NUM_OPS")
MACRO_PREFIXES = ("A_", "WS_", "ZERO_")  # per-op macros in NAME.c; no kernel enum constant starts with these


def describe(program: Program) -> str:
    """The IR as text: what `cnncc ir` prints."""
    lines = [f"program {program.name} ({program.dtype})",
             f"  input  {program.input.describe()}",
             f"  output {program.output.describe()} = {program.output.name}", "",
             f"parameters: {program.num_params} elements ({program.num_trainable} trainable, first), "
             "same offsets in the gradient buffer"]
    for p in program.params:
        lines.append(f"  {p.macro:<32} offset {p.offset:>9}  size {p.size:>9}  {list(p.shape)}"
                     f"{'' if p.trainable else '  (not trainable)'}  init {p.init}")
    lines += ["", f"activations: {program.activation_size} elements per sample "
                  "(each tensor at offset*batch; gradients mirror them)"]
    for op in program.ops:
        t = op.output
        lines.append(f"  {t.macro:<32} offset {t.offset:>9}  size {t.size:>9}  {format_shape(t.shape)}")
    slots = f" ({program.sample_slots} sample slots per conv, one per thread)" if program.sample_slots > 1 else ""
    lines += ["", f"workspace: {program.workspace_size} elements{slots}"]
    lines += ["", "forward schedule:"]
    for i, op in enumerate(program.ops, 1):
        ins = ", ".join(t.name for t in op.inputs)
        ws = f"  workspace {op.workspace_offset}+{op.workspace_size}" if op.workspace_size else ""
        lines.append(f"  {i:>3}. {op.name:<24} {op.label:<18} ({ins}) -> {op.output.name} "
                     f"{format_shape(op.output.shape)}{ws}")
    if program.loss:
        fused = f", fused with {program.loss.fused_op}" if program.loss.fused_op else ""
        lines.append(f"  loss: {program.loss.kind} on {program.loss.logits.name}{fused}")
    lines += ["", "backward schedule:"]
    for i, op in enumerate(program.backward_ops, 1):
        grads = [t.name for t, needed in zip(op.inputs, op.input_grads) if needed]
        wanted = [f"d{t}" for t in grads] + [f"d{p.key}" for p in op.params.values() if p.trainable]
        source = f"d{op.output.name}"
        if op.pooled:
            source = f"d{op.pooled.pool_output.name} (through {', '.join(op.pooled.absorbed)}: " \
                     "only each pool window's maximum)"
        lines.append(f"  {i:>3}. {op.name:<24} {source} -> {', '.join(wanted) or '(nothing)'}")
    return "\n".join(lines)


"""CheckedNet -> Program: concrete shapes, one flat parameter buffer, an activation plan,
a forward schedule and its reverse.

Codegen reads only this. A conv/dense `activation:` field becomes its own op after the
layer; `flatten` and `linear` are views of their input's memory and emit no op.
Every activation tensor has its own slot in the training plan (all are kept for backward);
its offset is per sample, so the C code addresses `acts + A_<TENSOR> * batch`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from .check import MAX_TENSOR_ELEMENTS, CheckedNet
from .layers import REGISTRY, Shape, as_chw, format_shape, numel
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
    template: str
    line: int | None  # the layer's line in the spec
    inputs: tuple[Tensor, ...]
    output: Tensor
    params: dict[str, ParamTensor]  # role (weight, bias, ...) -> tensor
    consts: dict[str, Any]
    workspace_offset: int
    workspace_size: int
    input_grads: tuple[bool, ...]  # False where the input is the network input (no dX needed)
    param_count: int = 0
    forward_scratch: int = 0  # leading elements of the workspace an inference forward uses, within the call
    pooled: PooledBackward | None = None  # a conv whose backward goes through the maxpool after it
    runs_backward: bool = True  # False: no trainable parameter at or before it (_prune_backward)

    @property
    def grad_inputs(self) -> tuple[Tensor, ...]:
        """The inputs whose gradient backward computes."""
        return tuple(t for t, needed in zip(self.inputs, self.input_grads) if needed)

    @property
    def int_consts(self) -> dict[str, int]:
        """The constants the template's enum names (booleans and floats are used otherwise)."""
        return {k: v for k, v in self.consts.items() if isinstance(v, int) and not isinstance(v, bool)}


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
class Deployment:
    """How a standalone build (`cnncc emit`) differs from the Python module's build: an
    inference-only build has a fixed batch and one static arena (memplan.py); `weights`
    declares the emitted `NAME_weights[]` in NAME.h. The default is the Python module."""
    inference_only: bool = False
    weights: bool = False
    batch: int = 0  # inference-only: the samples every forward call processes
    arena_size: int = 0  # inference-only: elements of the arena (planned activations + workspace)


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

    @property
    def absorbed_backward(self) -> dict[str, str]:
        """Ops without a backward of their own -> the op whose backward does their part (the
        loss, for a sigmoid fused into binary cross-entropy)."""
        absorbed = {name: op.name for op in self.ops if op.pooled for name in op.pooled.absorbed}
        if self.loss and self.loss.fused_op:
            absorbed[self.loss.fused_op] = "the loss"
        return absorbed

    @property
    def backward_ops(self) -> tuple[Op, ...]:
        """The reverse schedule, without the absorbed ops."""
        return tuple(op for op in reversed(self.ops) if self.has_backward(op))

    def has_backward(self, op: Op) -> bool:
        return self.loss is not None and op.runs_backward and op.name not in self.absorbed_backward

    @property
    def unmaterialised_gradients(self) -> frozenset[str]:
        """Tensors whose gradient no backward writes: those between a conv and the maxpool its
        backward goes through (PooledBackward; the pool's argmax lives in that memory)."""
        return frozenset(t for op in self.ops if op.pooled for t in (op.output.name, op.pooled.pool_input.name))

    def zeroed_gradients(self) -> list[tuple[int, int]]:
        """(per-sample offset, size) ranges of the activation gradients backward zeroes first:
        every tensor's but the unmaterialised ones, adjacent tensors merged into one range."""
        ranges: list[tuple[int, int]] = []
        skip = self.unmaterialised_gradients
        for t in sorted((op.output for op in self.ops), key=lambda t: t.offset):
            if t.name in skip or t.size == 0:
                continue
            if ranges and ranges[-1][0] + ranges[-1][1] == t.offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + t.size)
            else:
                ranges.append((t.offset, t.size))
        return ranges

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
            sizes["grads"] = self.num_params
            sizes["grad_activations"] = self.activation_size * batch
            sizes["optimizer_state"] = self.optimizer_state_size
        return sizes

    def buffer_bytes(self, batch: int, training: bool) -> int:
        return sum(self.buffer_elements(batch, training).values()) * self.itemsize


# The model header's public macros are <MODEL>_<suffix> (templates/model.h.j2, emit's
# inference header); a tensor macro A_<NAME> or workspace macro WS_<NAME> must never equal one.
PUBLIC_MACRO_SUFFIXES = ("H", "NUM_PARAMS", "NUM_TRAINABLE", "INPUT_SIZE", "OUTPUT_SIZE",
                         "ACTIVATIONS_PER_SAMPLE", "WORKSPACE_SIZE", "OPTIMIZER_STATE_SIZE", "BATCH",
                         "ARENA_SIZE", "NUM_OPS")
MACRO_PREFIXES = ("A_", "WS_")  # per-op macros in NAME.c; no kernel enum constant starts with these


class _Names:
    """Unique C identifier fragments for ops and their tensors: unique ignoring case (macros are
    upper-cased), and never producing a per-op macro equal to one of the model's public macros."""

    def __init__(self, model: str):
        self.used: set[str] = {"input"}
        self.reserved = {f"{model.upper()}_{suffix}" for suffix in PUBLIC_MACRO_SUFFIXES}

    def _free(self, name: str) -> bool:
        return name.lower() not in self.used and not any(
            prefix + name.upper() in self.reserved for prefix in MACRO_PREFIXES)

    def take(self, wanted: str) -> str:
        name, k = wanted, 1
        while not self._free(name):
            k += 1
            name = f"{wanted}_{k}"
        self.used.add(name.lower())
        return name


def lower(net: CheckedNet, sample_slots: int = 1, backend: str = "vector") -> Program:
    """sample_slots: samples a conv processes at once, one per thread of an OpenMP build (each
    with its own scratch); results are the same for any count (conv2d.c.j2). backend: whose
    kernel plans and templates the program is for (cnncc/backends)."""
    spec = net.spec
    names = _Names(spec.name)
    network_input = Tensor("input", spec.input_shape, -1)
    outputs: dict[str, Tensor] = {"input": network_input}
    ops: list[Op] = []
    kinds = {}  # op name -> its layer kind object
    arena = 0

    trainable = [(layer, decl) for layer in net.layers for decl in layer.params if decl.trainable]
    frozen = [(layer, decl) for layer in net.layers for decl in layer.params if not decl.trainable]
    params, offset = {}, 0
    for layer, decl in trainable + frozen:
        key = f"{layer.name}.{decl.name}"
        params[key] = ParamTensor(key, decl.shape, offset, decl.trainable, decl.init, decl.fan_in, decl.fan_out)
        offset += decl.size

    def emit(layer, kind_obj, kind, inputs, out_shape, layer_params, in_shapes):
        nonlocal arena
        name = names.take(layer.name if kind == layer.spec.kind else f"{layer.name}_{kind}")
        output = Tensor(name, out_shape, arena)
        arena += output.size
        op = Op(name, layer.name, kind, REGISTRY[kind].template, layer.spec.loc.line if layer.spec.loc else None,
                tuple(inputs), output, layer_params, kind_obj.kernel_consts(in_shapes, out_shape),
                0, kind_obj.workspace(in_shapes, out_shape), tuple(not t.is_input for t in inputs),
                sum(p.size for p in layer_params.values() if p.trainable),
                kind_obj.forward_scratch(in_shapes, out_shape))
        kinds[name] = kind_obj
        ops.append(op)
        return output

    for layer in net.layers:
        inputs = [outputs[name] for name in layer.spec.inputs]
        kind_obj = layer.layer
        layer_params = {decl.name: params[f"{layer.name}.{decl.name}"] for decl in layer.params}
        if REGISTRY[layer.spec.kind].template is None:
            # A view: the same memory under a new shape (its gradient is the same memory too).
            result = Tensor(inputs[0].name, layer.output_shape, inputs[0].offset)
        else:
            result = emit(layer, kind_obj, layer.spec.kind, inputs, layer.output_shape, layer_params,
                          list(layer.input_shapes))
        activation = kind_obj.activation_kind
        if activation:
            act_cls = REGISTRY[activation]
            # The `activation:` field names only the kind: its own fields (leaky_relu's alpha) take their defaults.
            act = act_cls(**{key: f.default for key, f in act_cls.fields.items()})
            result = emit(layer, act, activation, [result], layer.output_shape, {}, [layer.output_shape])
        outputs[layer.name] = result

    output = outputs[net.layers[-1].name]
    loss = _lower_loss(spec.loss, output, ops)
    ops = _pool_backward_through(ops, kinds, keep={output.name} | ({loss.logits.name} if loss else set()))
    if any(not layer.spec.trainable for layer in net.layers):  # fine-tuning: see _prune_backward
        ops = _prune_backward(ops)
    if sample_slots > 1:
        ops = [_with_sample_slots(op, kinds[op.name], sample_slots) for op in ops]
    ops, workspace = _place_workspaces(ops)
    return Program(spec.name, spec.dtype, network_input, output, tuple(ops), tuple(params.values()), offset,
                   sum(decl.size for _, decl in trainable), arena, workspace, loss, spec.optimizer,
                   {name: t for name, t in outputs.items() if name != "input"}, sample_slots=sample_slots,
                   backend=backend)


def _with_sample_slots(op: Op, kind_obj, slots: int) -> Op:
    if "SAMPLE_SLOTS" not in op.consts:
        return op
    consts = kind_obj.with_sample_slots(op.consts, slots)
    if consts["SCRATCH_SIZE"] > MAX_TENSOR_ELEMENTS:  # its offsets are C int constants (check.py)
        raise ValueError(f"{op.name}: {slots} threads would need {consts['SCRATCH_SIZE']:,} elements of scratch, "
                         f"more than {MAX_TENSOR_ELEMENTS:,}; use fewer threads")
    return replace(op, consts=consts, workspace_size=consts["SCRATCH_SIZE"])


POOLED_BACKWARD_ACTIVATIONS = ("relu",)  # what may sit between a conv and its maxpool (or nothing)


def _pool_backward_through(ops: list[Op], kinds: dict, keep: set[str]) -> list[Op]:
    """Give every conv -> [relu] -> maxpool chain whose intermediate tensors nothing else reads
    (and that are not the network output) a PooledBackward (see there)."""
    producer = {op.output.name: op for op in ops}
    readers = Counter(t.name for op in ops for t in op.inputs)
    fused = {}
    for pool in ops:
        if pool.kind not in ("maxpool2d", "maxpool1d"):
            continue
        conv = activation = producer.get(pool.inputs[0].name)
        if activation is not None and activation.kind in POOLED_BACKWARD_ACTIVATIONS:
            conv = producer.get(activation.inputs[0].name)
        else:
            activation = None
        if conv is None or conv.kind not in ("conv2d", "conv1d"):
            continue
        between = [conv.output.name] + ([activation.output.name] if activation else [])
        if any(readers[name] != 1 or name in keep for name in between):
            continue
        if pool.output.size > pool.inputs[0].size:
            continue  # (padded, overlapping windows) the argmax would not fit where the pool keeps it
        consts = kinds[conv.name].pooled_backward_consts(conv.consts, pool.consts)
        if consts is None:
            continue
        fused[conv.name] = replace(
            conv, consts=consts, workspace_size=consts["SCRATCH_SIZE"],
            pooled=PooledBackward(pool.name, activation.name if activation else None, pool.inputs[0], pool.output))
        fused[pool.name] = replace(pool, consts={**pool.consts, "keeps_argmax": True})
    return [fused.get(op.name, op) for op in ops]


def _prune_backward(ops: list[Op]) -> list[Op]:
    """Frozen layers (`trainable: false`): backward exists only to reach trainable parameters, so an
    op runs backward only if it, or an op its inputs come from, has one. Before the first trainable
    layer nothing runs backward at all, and the first op that does computes no gradient for an input
    whose producer runs none (the kernels already skip dX for input_grads False, as for the network
    input). Only for a network with a frozen layer: otherwise every op keeps its backward, so the
    gradient of every tensor stays readable (Model.activation(grad=True), the input-gradient tests'
    identity layer before the first trainable one)."""
    runs: dict[str, bool] = {}  # tensor name -> its producer runs backward
    pruned = []
    for op in ops:
        upstream = tuple(not t.is_input and runs[t.name] for t in op.inputs)
        own = any(p.trainable for p in op.params.values())
        runs[op.output.name] = own or any(upstream)
        pruned.append(op if runs[op.output.name] and upstream == op.input_grads else
                      replace(op, input_grads=upstream, runs_backward=runs[op.output.name]))
    return pruned


def _place_workspaces(ops: list[Op]) -> tuple[list[Op], int]:
    """Every op's workspace after the previous one's: (ops with their offsets, the total)."""
    placed, offset = [], 0
    for op in ops:
        placed.append(replace(op, workspace_offset=offset))
        offset += op.workspace_size
    return placed, offset


def _lower_loss(kind: str | None, output: Tensor, ops: list[Op]) -> Loss | None:
    if kind is None:
        return None
    logits, fused_op = loss_kind(kind).logits(output, ops)
    return Loss(kind, logits, fused_op, output.size)


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
        lines.append(f"  {i:>3}. {op.name:<24} {op.kind:<15} ({ins}) -> {op.output.name} "
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


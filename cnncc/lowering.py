"""CheckedNet -> Program: the IR (ir.py) of a checked network for one backend.

A conv/dense `activation:` field becomes its own op after the layer; `flatten` and `linear` are
views of their input's memory and emit no op. Every activation tensor has its own slot in the
training plan (all are kept for backward); its offset is per sample. A relu runs in the op
before it, and an add in the batchnorm before it (epilogues). Lowering then fuses the
backward of conv -> [relu] -> maxpool chains (ir.PooledBackward), asks the backend for every op's
kernel plan exactly once, refuses a plan whose scratch C could not index, and places the ops'
workspaces (memplan.place_workspaces: what an op keeps from forward to backward has its own
region, every op's scratch within a call shares one).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import fields, replace

from .backends import backend as backend_named
from .backends.plan import PlanRequest
from .check import MAX_TENSOR_ELEMENTS, CheckedLayer, CheckedNet
from .errors import Diagnostic, SpecError
from .ir import (MACRO_PREFIXES, PUBLIC_MACRO_SUFFIXES, Loss, Op, ParamTensor, PooledBackward, Program, Tensor,
                 first_gradient_writes)
from .layers import REGISTRY
from .losses import loss_kind
from .memplan import place_workspaces


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


class _Lowered:
    """An op before its plan: the layer kind object and the checked layer it comes from."""

    def __init__(self, op: Op, kind_obj, layer: CheckedLayer, in_shapes):
        self.op, self.kind_obj, self.layer, self.in_shapes = op, kind_obj, layer, tuple(in_shapes)


def lower(net: CheckedNet, sample_slots: int = 1, backend: str = "vector", fuse: bool = True,
          for_device: bool = False) -> Program:
    """sample_slots: samples a conv processes at once, one per thread of an OpenMP build (each
    with its own scratch); results are the same for any count. backend: whose kernel plans and
    templates the program is for (cnncc/backends). fuse: a relu becomes the epilogue of the op
    before it where that op's kernels can apply it (Planner.plans_relu_epilogue: conv, dense,
    batchnorm, add): a layer's `activation: relu`, and a relu layer whose input only it reads
    (_relu_epilogues); and an add after a batchnorm becomes the batchnorm's epilogue, with the
    add's relu (_residual_epilogues); the results are the same bits either way. for_device: the program `cnncc emit`
    writes, whose kernel plans keep within a device's RAM (PlanRequest.for_device)."""
    spec = net.spec
    chosen = backend_named(backend)
    epilogues = _relu_epilogues(net, chosen) if fuse else {}
    fused_relus = {relu: source for source, relu in epilogues.items()}
    residuals = _residual_epilogues(net, chosen) if fuse else {}
    layers = {layer.name: layer for layer in net.layers}
    fused_adds = {add: layers[bn] for bn, add in residuals.items()}
    names = _Names(spec.name)
    network_input = Tensor("input", spec.input_shape, -1)
    outputs: dict[str, Tensor] = {"input": network_input}
    lowered: list[_Lowered] = []
    arena = 0

    trainable = [(layer, decl) for layer in net.layers for decl in layer.params if decl.trainable]
    frozen = [(layer, decl) for layer in net.layers for decl in layer.params if not decl.trainable]
    params, offset = {}, 0
    for layer, decl in trainable + frozen:
        key = f"{layer.name}.{decl.name}"
        params[key] = ParamTensor(key, decl.shape, offset, decl.trainable, decl.init, decl.fan_in, decl.fan_out)
        offset += decl.size

    def emit(layer, kind_obj, kind, name, inputs, out_shape, layer_params, in_shapes, fused=(), residual=False):
        nonlocal arena
        output = Tensor(names.take(name), out_shape, arena)
        arena += output.size
        op = Op(output.name, layer.name, kind, layer.spec.loc.line if layer.spec.loc else None, tuple(inputs),
                output, layer_params, tuple(not t.is_input for t in inputs),
                sum(p.size for p in layer_params.values() if p.trainable), fused=fused, residual=residual)
        lowered.append(_Lowered(op, kind_obj, layer, in_shapes))
        return output

    def params_of(layer):
        return {decl.name: params[f"{layer.name}.{decl.name}"] for decl in layer.params}

    for layer in net.layers:
        if layer.name in fused_relus:  # done by its input's op: its output is that op's
            outputs[layer.name] = outputs[fused_relus[layer.name]]
            continue
        if layer.name in residuals:  # done where the add after it runs, once the residual exists
            continue
        if layer.name in fused_adds:  # the batchnorm before it, with this add (and its relu) fused
            bn = fused_adds[layer.name]
            other = layer.spec.inputs[1] if layer.spec.inputs[0] == bn.name else layer.spec.inputs[0]
            fused = (layer.name,) + ((epilogues[layer.name],) if layer.name in epilogues else ())
            result = emit(bn, bn.layer, bn.spec.kind, bn.name, [outputs[bn.spec.inputs[0]], outputs[other]],
                          bn.output_shape, params_of(bn), [bn.input_shapes[0], outputs[other].shape],
                          fused, residual=True)
            outputs[bn.name] = outputs[layer.name] = result
            continue
        inputs = [outputs[name] for name in layer.spec.inputs]
        kind_obj = layer.layer
        layer_params = params_of(layer)
        activation = kind_obj.activation_kind
        if REGISTRY[layer.spec.kind].template is None:
            # A view: the same memory under a new shape (its gradient is the same memory too).
            result = Tensor(inputs[0].name, layer.output_shape, inputs[0].offset)
        else:
            # its own `activation: relu` in its op's kernels: the layer's output is the op's, so
            # nothing Model.activation returns is lost
            own_relu = bool(activation and fuse and REGISTRY[activation].gradient_where_positive
                            and chosen.planner(layer.spec.kind).plans_relu_epilogue(kind_obj))
            fused = (f"{layer.name}_{activation}",) if own_relu else \
                (epilogues[layer.name],) if layer.name in epilogues else ()
            result = emit(layer, kind_obj, layer.spec.kind, layer.name, inputs, layer.output_shape, layer_params,
                          list(layer.input_shapes), fused)
            activation = None if own_relu else activation
        if activation:
            act_cls = REGISTRY[activation]
            # The `activation:` field names only the kind: its own fields (leaky_relu's alpha) take their defaults.
            act = act_cls(**{key: f.default for key, f in act_cls.fields.items()})
            result = emit(layer, act, activation, f"{layer.name}_{activation}", [result], layer.output_shape, {},
                          [layer.output_shape])
        outputs[layer.name] = result

    output = outputs[net.layers[-1].name]
    loss = _lower_loss(spec.loss, output, [item.op for item in lowered])
    if any(not layer.spec.trainable for layer in net.layers):  # fine-tuning: see _prune_backward
        lowered = _prune_backward(lowered)
    pooled = _pooled_backwards(lowered, chosen, keep={output.name} | ({loss.logits.name} if loss else set()))
    first_writes = first_gradient_writes([item.op for item in lowered], pooled, loss)
    plans: dict = {}  # a network of many alike layers plans each kind of op once
    ops = [_planned(item, chosen, sample_slots, pooled, spec.path, plans, first_writes.get(item.op.name, ()),
                    for_device) for item in lowered]
    ops, workspace = place_workspaces(ops)
    return Program(spec.name, spec.dtype, network_input, output, tuple(ops), tuple(params.values()), offset,
                   sum(decl.size for _, decl in trainable), arena, workspace, loss, spec.optimizer,
                   {name: t for name, t in outputs.items() if name != "input"}, sample_slots=sample_slots,
                   backend=backend, fused_away={**epilogues, **residuals})


_REQUEST_FIELDS = tuple(f.name for f in fields(PlanRequest) if f.name != "layer")


def _planned(item: _Lowered, chosen, slots: int, pooled: dict[str, PooledBackward], spec_path: str,
             plans: dict, first_writes: tuple[bool, ...], for_device: bool) -> Op:
    """The op with its kernel plan (planned once), within the limit of C's int offsets. `plans`
    memoises the plans by request: a plan depends on nothing else. first_writes: ir.first_gradient_writes."""
    op, fused = item.op, pooled.get(item.op.name)
    request = PlanRequest(
        item.kind_obj, item.in_shapes, op.output.shape, tuple(op.params),
        tuple(role for role, p in op.params.items() if p.trainable), op.input_grads, slots,
        fused.pool_output.shape if fused else None, bool(fused and (fused.activation or op.fused)),
        keeps_argmax=any(p.pool == op.name for p in pooled.values()), relu_epilogue=op.relu_epilogue,
        first_gradient_writes=first_writes, for_device=for_device, residual_epilogue=op.residual)
    # a layer kind object compares by identity: its field values stand for it
    key = (op.kind, tuple(item.kind_obj.values().items()), *(getattr(request, f) for f in _REQUEST_FIELDS))
    try:
        plan = plans.get(key)
    except TypeError:  # a field value that cannot be hashed: planned afresh
        key, plan = None, None
    if plan is None:
        plan = chosen.planner(op.kind).plan(request)
        if key is not None:
            plans[key] = plan
    if plan.workspace > MAX_TENSOR_ELEMENTS:  # its offsets are C int constants
        if slots > 1:
            raise ValueError(f"{op.name}: {slots} threads would need {plan.workspace:,} elements of scratch, "
                             f"more than {MAX_TENSOR_ELEMENTS:,}; use fewer threads")
        layer = item.layer.spec
        raise SpecError([Diagnostic(
            f"its kernels' scratch (padded planes, patch matrices) would have {plan.workspace:,} elements; "
            f"the limit is {MAX_TENSOR_ELEMENTS:,}", layer.loc, layer.label,
            hint="fewer input channels per group (groups), a smaller kernel, or a smaller output")], spec_path)
    return replace(op, pooled=fused, plan=plan)


def _relu_epilogues(net: CheckedNet, chosen) -> dict[str, str]:
    """layer -> the relu layer after it, for every layer whose op the backend can end with a relu
    (Planner.plans_relu_epilogue) and whose output nothing but that relu reads
    (nor is it the network's output). The op then writes max(0, y) where the relu's output would
    be, and its backward takes the relu's output and gradient: one pass over the tensor instead of
    three, and one tensor less. Its own output is never stored (Program.fused_away)."""
    readers = Counter(name for layer in net.layers for name in layer.spec.inputs)
    by_name = {layer.name: layer for layer in net.layers}
    fused = {}
    for relu in net.layers:
        if not REGISTRY[relu.spec.kind].gradient_where_positive or len(relu.spec.inputs) != 1:
            continue
        source = by_name.get(relu.spec.inputs[0])
        if source is None or readers[source.name] != 1 or source is net.layers[-1]:
            continue
        if REGISTRY[source.spec.kind].template is None or source.layer.activation_kind:
            continue
        if chosen.planner(source.spec.kind).plans_relu_epilogue(source.layer):
            fused[source.name] = relu.name
    return fused


def _residual_epilogues(net: CheckedNet, chosen) -> dict[str, str]:
    """batchnorm layer -> the add after it, for every add of two inputs where one is the output of
    a layer whose op can end with the add (Planner.plans_residual_epilogue: batchnorm) and that
    nothing else reads (nor is it the network's output), and the other, the residual, is not that
    layer's input (the backward writes both gradients through restrict pointers). The layer's op
    runs where the add runs, once the residual exists (ResNet's shortcut conv comes after the
    block's last batchnorm), and writes the add's output, then its relu if one is fused after the
    add: one pass over the tensor instead of two forward, and one tensor less. The layer's own
    output is never stored (Program.fused_away)."""
    readers = Counter(name for layer in net.layers for name in layer.spec.inputs)
    by_name = {layer.name: layer for layer in net.layers}

    def stored(name: str) -> str:  # the layer whose tensor `name` is: views share their input's
        while name in by_name and REGISTRY[by_name[name].spec.kind].template is None:
            name = by_name[name].spec.inputs[0]
        return name

    fused = {}
    for add in net.layers:
        if not REGISTRY[add.spec.kind].sums_its_inputs or len(add.spec.inputs) != 2 or add.layer.activation_kind:
            continue
        for source_name, other in (add.spec.inputs[::-1], add.spec.inputs):
            source = by_name.get(source_name)
            if source is None or source_name == other or readers[source_name] != 1 or source is net.layers[-1]:
                continue
            if REGISTRY[source.spec.kind].template is None or source.layer.activation_kind:
                continue
            if stored(source.spec.inputs[0]) == stored(other):
                continue
            if chosen.planner(source.spec.kind).plans_residual_epilogue(source.layer):
                fused[source_name] = add.name
                break
    return fused


def _prune_backward(lowered: list[_Lowered]) -> list[_Lowered]:
    """Frozen layers (`trainable: false`): backward exists only to reach trainable parameters, so an
    op runs backward only if it, or an op its inputs come from, has one. Before the first trainable
    layer nothing runs backward at all, and the first op that does computes no gradient for an input
    whose producer runs none (the kernels already skip dX for input_grads False, as for the network
    input). Only for a network with a frozen layer: otherwise every op keeps its backward, so the
    gradient of every tensor stays readable (Model.activation(grad=True), the input-gradient tests'
    identity layer before the first trainable one)."""
    runs: dict[str, bool] = {}  # tensor name -> its producer runs backward
    pruned = []
    for item in lowered:
        op = item.op
        upstream = tuple(not t.is_input and runs[t.name] for t in op.inputs)
        own = any(p.trainable for p in op.params.values())
        runs[op.output.name] = own or any(upstream)
        if not (runs[op.output.name] and upstream == op.input_grads):
            item = _Lowered(replace(op, input_grads=upstream, runs_backward=runs[op.output.name]), item.kind_obj,
                            item.layer, item.in_shapes)
        pruned.append(item)
    return pruned


def _pooled_backwards(lowered: list[_Lowered], chosen, keep: set[str]) -> dict[str, PooledBackward]:
    """conv name -> its PooledBackward, for every conv -> [relu] -> maxpool chain whose intermediate
    tensors nothing else reads (and that are not the network output or the loss's input)."""
    ops = [item.op for item in lowered]
    by_name = {item.op.name: item for item in lowered}
    producer = {op.output.name: op for op in ops}
    readers = Counter(t.name for op in ops for t in op.inputs)
    fused = {}
    for pool in ops:
        if not REGISTRY[pool.kind].gradient_at_window_max:
            continue
        conv = activation = producer.get(pool.inputs[0].name)
        if activation is not None and REGISTRY[activation.kind].gradient_where_positive:
            conv = producer.get(activation.inputs[0].name)
        else:
            activation = None
        if conv is None:
            continue
        item = by_name[conv.name]
        if conv.runs_backward and not any(p.trainable for p in conv.params.values()):
            continue  # frozen between trainable layers: the input gradient alone, as the plain kernels do
        if not chosen.planner(conv.kind).plans_pooled_backward(item.kind_obj, item.in_shapes[0]):
            continue
        between = [conv.output.name] + ([activation.output.name] if activation else [])
        if any(readers[name] != 1 or name in keep for name in between):
            continue
        if pool.output.size > pool.inputs[0].size:
            continue  # (padded, overlapping windows) the argmax would not fit where the pool keeps it
        fused[conv.name] = PooledBackward(pool.name, activation.name if activation else None, pool.inputs[0],
                                          pool.output)
    return fused


def _lower_loss(kind: str | None, output: Tensor, ops: list[Op]) -> Loss | None:
    if kind is None:
        return None
    logits, fused_op = loss_kind(kind).logits(output, ops)
    return Loss(kind, logits, fused_op, output.size)

"""Kernel plans: how one op's kernels run on one backend, decided once while lowering.

A planner (one per template family, beside its templates) turns a PlanRequest (the layer kind
object, its shapes, which gradients its backward writes, the sample slots, a fused pooled
backward) into a frozen KernelPlan: the templates that render the op's forward and backward,
the named constants each kernel's enum holds (only those it reads), what else the templates
print (flags, floats, C expressions), the kernels' arguments by role (arguments.py) and the
workspace they use. Templates read the plan and decide nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..layers import LayerKind, Shape


@dataclass(frozen=True)
class KernelPlan:
    forward_template: str  # under templates/, without .c.j2: "layers/conv2d_shifted"
    backward_template: str
    forward_dims: dict[str, int]  # the forward kernel's enum (read-only)
    backward_dims: dict[str, int]  # the backward kernel's enum (read-only)
    forward_args: tuple[str, ...]  # argument roles, outputs first (arguments.py)
    backward_args: tuple[str, ...]  # the gradients it writes first, then what it reads
    settings: dict[str, Any] = field(default_factory=dict)  # flags, floats and C expressions (read-only)
    workspace: int = 0  # elements of the op's workspace, independent of the batch
    forward_scratch: int = 0  # its leading elements an inference forward uses, only within its call
    # per input: the backward writes that input's whole gradient with `=` (no zeroing before it);
    # only where PlanRequest.first_gradient_writes allows it, else it adds (+=) into zeros
    initialised_grads: tuple[bool, ...] = ()
    # True: the forward leaves something in the workspace that the backward reads (batchnorm's
    # statistics). False: each kernel call writes all it reads there, so the training plan lets the
    # workspace share memory with other ops' (memplan.place_workspaces)
    keeps_workspace: bool = True

    def initialises_grad(self, index: int) -> bool:
        return index < len(self.initialised_grads) and self.initialised_grads[index]

    @property
    def dims(self) -> dict[str, int]:
        """Every named constant of the op's kernels."""
        return {**self.forward_dims, **self.backward_dims}


@dataclass(frozen=True)
class PlanRequest:
    layer: LayerKind  # the layer kind object: its fields and geometry
    inputs: tuple[Shape, ...]
    output: Shape
    params: tuple[str, ...]  # the op's parameter roles (weight, bias, gamma, ...)
    trainable: tuple[str, ...]  # those of them that get a gradient
    input_grads: tuple[bool, ...]  # the inputs whose gradient the backward writes
    sample_slots: int = 1  # samples a kernel may process at once, one per thread
    pooled_output: Shape | None = None  # a conv whose backward goes through the maxpool of this output
    pooled_positive_only: bool = False  # that backward's gradient passes only where the pool's output is positive
    keeps_argmax: bool = False  # a maxpool whose argmax a conv's backward reads (ir.PooledBackward)
    relu_epilogue: bool = False  # the op applies the relu after it (Planner.plans_relu_epilogue)
    # per input: this op's backward is the first in the reverse schedule to write that input's
    # gradient, so it may write it with `=` instead of adding into zeros (KernelPlan.initialised_grads)
    first_gradient_writes: tuple[bool, ...] = ()
    # the program is for a device (`cnncc emit`: a microcontroller's RAM holds the weights' scratch
    # too), not for the Python module on the host: a planner keeps its scratch within device bounds
    for_device: bool = False
    # a batchnorm whose output only an add reads (Planner.plans_residual_epilogue): the op's second
    # input is the add's other one (the residual), added to the result before any relu epilogue
    residual_epilogue: bool = False


class Planner:
    """Plans the kernels of the layer kinds whose template family it is registered for."""
    templates: ClassVar[tuple[str, ...]] = ()  # every template it may pick, for the registry test

    def plan(self, request: PlanRequest) -> KernelPlan:
        raise NotImplementedError

    def plans_pooled_backward(self, layer: LayerKind, input_shape: Shape) -> bool:
        """Whether a backward through the maxpool after this op (ir.PooledBackward) can be planned."""
        return False

    def plans_relu_epilogue(self, layer: LayerKind) -> bool:
        """Whether this op's kernels can apply the relu after it: the forward writes max(0, y), and
        the backward takes the relu's output and gradient (PlanRequest.relu_epilogue)."""
        return False

    def plans_residual_epilogue(self, layer: LayerKind) -> bool:
        """Whether this op's kernels can end with the add after it (PlanRequest.residual_epilogue):
        the forward writes y + residual, then the relu if there is one; the backward writes the
        residual's gradient too."""
        return False


def resolve_roles(roles: tuple[str, ...], request: PlanRequest, settings: dict[str, Any]) -> tuple[str, ...]:
    """The roles a kernel takes: "role if condition" keeps a role only where the condition (another
    role taken, or a true setting) holds (a role under two conditions is taken once, where either holds); a parameter role only where the op has that parameter,
    its gradient only where it is trainable; an input gradient only where it is needed. A backward
    that writes no gradient takes only the batch (and does nothing)."""
    taken: list[str] = []
    for entry in roles:
        role, _, condition = entry.partition(" if ")
        if condition and not (condition in taken or settings.get(condition)) or role in taken:
            continue
        if role in PARAM_ROLES and role not in request.params:
            continue
        if role.startswith("d") and role[1:] in PARAM_ROLES and role[1:] not in request.trainable:
            continue
        if role == "din" and not request.input_grads[0] or role == "dins" and not any(request.input_grads):
            continue
        if role == "dresidual" and not request.input_grads[1]:
            continue
        taken.append(role)
    if roles and roles[0].startswith("d") and not any(r.startswith("d") and r not in READ_ROLES for r in taken):
        return ("batch",)
    return tuple(taken)


PARAM_ROLES = ("weight", "bias", "gamma", "beta", "running_mean", "running_var")
READ_ROLES = ("dout", "dpool")  # gradients a backward reads

"""A kernel's arguments: the roles of its plan (plan.KernelPlan.forward_args) bound to the op's
tensors, as C declarations for the kernel's signature and C values for its call.

Every kernel takes its tensors explicitly, outputs first (for a backward: the gradients it
writes, then what it reads), so NAME_forward and NAME_backward read as the network's data flow.
A call's values name the buffers of the entry point that makes it: `acts`, `grad_acts`,
`params`, `grads`, `workspace` (locals of NAME_forward, NAME_backward and the profiling entry
points), `input`, `batch`, `training` and `seed`. Every name and offset passes c_ident here.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..cvalues import c_comment, c_ident
from ..layers import REGISTRY
from .plan import PARAM_ROLES

BUFFERS = ("acts", "grad_acts", "params", "grads", "workspace")  # the entry points' locals
SCALARS = ("input", "batch", "training", "seed")  # the entry points' parameters
WRITTEN_PARAMS = ("running_mean", "running_var")  # parameters a training forward updates
TRAINING_ONLY = ("training", "seed")  # what no kernel of an inference build reads


@dataclass(frozen=True)
class Argument:
    name: str  # the parameter's name inside the kernel
    declaration: str  # "const real *restrict in"
    value: str  # what the entry point passes: "acts + A_CONV1 * batch"
    comment: str  # the tensor and its shape
    uses: tuple[str, ...]  # the entry point's buffers and scalars the value reads


class Arguments(tuple):
    """The bound arguments of one kernel, in order."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self)

    def has(self, name: str) -> bool:
        return name in self.names

    def parameter_lines(self, extra: str | None = None) -> str:
        """The kernel's parameter list, one a line with the tensor each one is, closed by ')'."""
        declarations = [a.declaration for a in self] + ([extra] if extra else [])
        comments = [a.comment for a in self] + ([""] if extra else [])
        lines = []
        for i, (declaration, comment) in enumerate(zip(declarations, comments)):
            text = declaration + ("," if i < len(declarations) - 1 else ")")
            lines.append(f"    {text:<40}/* {comment} */" if comment else f"    {text}")
        return "\n".join(lines)


def _activation(t) -> tuple[str, tuple[str, ...]]:
    if t.is_input:
        return "input", ("input",)
    return f"acts + {c_ident(t.macro)} * batch", ("acts", "batch")


def _gradient(t) -> tuple[str, tuple[str, ...]]:
    return f"grad_acts + {c_ident(t.macro)} * batch", ("grad_acts", "batch")


def _describe(t) -> str:
    return c_comment(f"{t.name} {t.describe()}")


def _param(p, buffer: str) -> tuple[str, tuple[str, ...]]:
    return f"{buffer} + {c_ident(p.macro)}", (buffer,)


def _bind_role(op, role: str, inference: bool = False) -> list[Argument]:
    ws = f"workspace + WS_{c_ident(op.name.upper())}"
    scratch_comment = c_comment(f"{op.workspace_size} elements of workspace")
    if role == "out":
        value, uses = _activation(op.output)
        return [Argument("out", "real *restrict out", value, _describe(op.output), uses)]
    if role == "in":
        value, uses = _activation(op.inputs[0])
        return [Argument("in", "const real *restrict in", value, _describe(op.inputs[0]), uses)]
    if role == "residual":  # a batchnorm's fused add's other input (never the same tensor as `in`)
        value, uses = _activation(op.inputs[1])
        return [Argument("residual", "const real *restrict residual", value, _describe(op.inputs[1]), uses)]
    if role == "ins":  # not restrict: two inputs may be the same tensor
        return [Argument(f"in{i}", f"const real *in{i}", *_pair(_activation(t), _describe(t)))
                for i, t in enumerate(op.inputs)]
    if role == "din":
        value, uses = _gradient(op.inputs[0])
        return [Argument("din", "real *restrict din", value, _describe(op.inputs[0]), uses)]
    if role == "dresidual":
        value, uses = _gradient(op.inputs[1])
        return [Argument("dresidual", "real *restrict dresidual", value, _describe(op.inputs[1]), uses)]
    if role == "dins":
        return [Argument(f"din{i}", f"real *din{i}", *_pair(_gradient(t), _describe(t)))
                for i, (t, needed) in enumerate(zip(op.inputs, op.input_grads)) if needed]
    if role == "dout":
        value, uses = _gradient(op.output)
        return [Argument("dout", "const real *restrict dout", value, _describe(op.output), uses)]
    if role in PARAM_ROLES:
        p = op.params[role]
        const = "" if role in WRITTEN_PARAMS and not inference else "const "
        return [Argument(role, f"{const}real *restrict {role}", *_pair(_param(p, "params"), _shape(p)))]
    if role.startswith("d") and role[1:] in PARAM_ROLES:
        p = op.params[role[1:]]
        return [Argument(role, f"real *restrict {role}", *_pair(_param(p, "grads"), _shape(p)))]
    if role == "scratch":
        return [Argument("scratch", "real *restrict scratch", ws, scratch_comment, ("workspace",))]
    if role == "slots":  # shared by the threads of the sample slots: not restrict
        return [Argument("slots", "real *slots", ws, scratch_comment, ("workspace",))]
    if role == "argmax":  # a maxpool's forward keeps it in its input's gradient, only in training
        value, uses = _gradient(op.inputs[0])
        return [Argument("argmax", "char *restrict argmax", f"training && grad_acts ? (char *)({value}) : NULL",
                         c_comment(f"int32 [N, {op.output.size}], or NULL"), ("training",) + uses)]
    if role in ("pool_out", "dpool", "pool_argmax"):
        pooled = op.pooled
        if role == "pool_out":
            value, uses = _activation(pooled.pool_output)
            return [Argument(role, "const real *restrict pool_out", value, _describe(pooled.pool_output), uses)]
        if role == "dpool":
            value, uses = _gradient(pooled.pool_output)
            return [Argument(role, "const real *restrict dpool", value, _describe(pooled.pool_output), uses)]
        value, uses = _gradient(pooled.pool_input)
        return [Argument("argmax", "const char *argmax", f"(const char *)({value})",
                         c_comment(f"int32 [N, {pooled.pool_output.size}], in the memory of "
                                   f"{pooled.pool_input.name}'s gradient"), uses)]
    if role == "batch":
        return [Argument("batch", "size_t batch", "batch", "", ("batch",))]
    if role == "training":
        return [Argument("training", "int training", "training", "", ("training",))]
    if role == "seed":
        return [Argument("seed", "uint64_t seed", "seed", "", ("seed",))]
    raise ValueError(f"unknown kernel argument role {role!r}")


def _pair(value_uses, comment):
    value, uses = value_uses
    return value, comment, uses


def _shape(p) -> str:
    return c_comment(f"{p.key} [{', '.join(str(d) for d in p.shape)}]")


def bind(program, op, direction: str) -> Arguments:
    """The arguments of an op's forward or backward kernel in `program`. An inference-only build
    has no gradients, no training flag and no random stream: a role that would read one (a
    maxpool's argmax, dropout's seed) is left out, and so is what the layer kind reads only in
    training (batchnorm's saved statistics). It writes no parameter, so every parameter is const;
    with compiled-in weights, a layer's folded parameters are replaced by their constants."""
    roles = op.plan.forward_args if direction == "forward" else op.plan.backward_args
    if not program.deployment.inference_only:
        return Arguments(a for role in roles for a in _bind_role(op, role))
    skipped = TRAINING_ONLY + REGISTRY[op.kind].training_only_roles
    constants = program.deployment.constants_of(op.name)
    folded = {role for k in constants for role in k.folded}
    bound = []
    for role in roles:
        if role in skipped or role in folded:
            if constants and role == constants[0].folded[0]:  # the constants take the first one's place
                bound += [_constant(program, k) for k in constants]
            continue
        bound += [a for a in _bind_role(op, role, inference=True) if "grad_acts" not in a.uses]
    return Arguments(bound)


def _constant(program, k) -> Argument:
    return Argument(k.role, f"const real *restrict {k.role}", f"{c_ident(program.name)}_constants + {c_ident(k.macro)}",
                    c_comment(f"{k.op}.{k.role} [{k.size}], from {', '.join(k.folded)}"), ())


def uses(program, ops, direction: str) -> frozenset[str]:
    """The buffers and scalars the calls of `ops`' kernels read."""
    return frozenset(u for op in ops for a in bind(program, op, direction) for u in a.uses)

"""The C ABI of a generated model, declared once.

Every exported entry point (its name, signature and documentation), the context and hyper
structs, and the public size macros are declared here. templates/model.h.j2 renders the header
from these declarations, `cdef` gives cffi the same declarations, and `Bindings` is the only
place Python looks the functions up. Nothing else spells an entry point's name.

Types are written with placeholders filled per program: {real} (float or double), {target}
(int32_t for class labels, else {real}) and {model} (the model's C name).
"""
from __future__ import annotations

from dataclasses import dataclass

from .cvalues import c_comment, c_ident, c_int
from .optimizers import optimizer_kind


@dataclass(frozen=True)
class Arg:
    ctype: str
    name: str


@dataclass(frozen=True)
class EntryPoint:
    suffix: str  # NAME_<suffix>
    returns: str
    args: tuple[Arg, ...]
    doc: str
    builds: str  # "all" | "training" (the Python module's build) | "loss" (a build that can train) | "inference"


def _args(*pairs: str) -> tuple[Arg, ...]:
    return tuple(Arg(*pair.rsplit(" ", 1)) for pair in pairs)


CTX = "const {model}_context * ctx"
ENTRY_POINTS: tuple[EntryPoint, ...] = (
    EntryPoint("activations_size", "size_t", _args("size_t batch"),
               "Elements of the activation buffers for a batch.", "training"),
    EntryPoint("forward", "void", _args(CTX, "const {real} * input", "size_t batch", "int training", "uint64_t seed"),
               "Forward pass; training = 1 uses batch statistics and dropout (seeded by seed).", "training"),
    EntryPoint("forward", "void", _args(CTX, "const {real} * input"),
               "Forward pass (inference) of BATCH samples: input [BATCH, INPUT_SIZE].", "inference"),
    EntryPoint("output", "const {real} *", _args(CTX, "size_t batch"),
               "The output of the last forward pass: [batch, OUTPUT_SIZE] inside ctx->activations.", "training"),
    EntryPoint("output", "const {real} *", _args(CTX),
               "The output of the last forward pass: [BATCH, OUTPUT_SIZE] inside ctx->arena.", "inference"),
    EntryPoint("loss", "double", _args(CTX, "const {target} * targets", "size_t batch"),
               "The batch-mean {loss} loss of the last forward pass. targets: {targets}.", "loss"),
    EntryPoint("zero_grad", "void", _args(CTX), "Sets every gradient to zero.", "loss"),
    EntryPoint("backward", "void",
               _args(CTX, "const {real} * input", "const {target} * targets", "size_t batch", "uint64_t seed"),
               "Backward pass after forward(training = 1, seed): adds the loss gradient to ctx->grads.", "loss"),
    EntryPoint("step", "int", _args(CTX, "const {model}_hyper * hyper"),
               "One {optimizer} update of the trainable parameters from ctx->grads: returns 1, or 0 and changes "
               "nothing when the update would leave a weight or an optimizer value NaN or infinite.", "loss"),
    EntryPoint("train_step", "int",
               _args(CTX, "const {real} * input", "const {target} * targets", "size_t batch",
                     "const {model}_hyper * hyper", "uint64_t seed", "double * loss"),
               "forward + loss + zero_grad + backward + step; stores the batch-mean loss in *loss and returns "
               "step's result: 1 once the trainable parameters are updated; 0 when the loss is not finite (then "
               "at once) or the update would not be, and then neither the trainable parameters nor the optimizer "
               "state have changed (the forward pass in training mode has still updated any batchnorm running "
               "statistics).", "loss"),
    EntryPoint("forward_op", "void",
               _args(CTX, "const {real} * input", "size_t batch", "int training", "uint64_t seed", "int op"),
               "Profiling (`cnncc bench SPEC --layers`): runs one op of the forward schedule, op = its index "
               "from 0 in the order of NAME_forward (NUM_OPS ops; other values do nothing).", "training"),
    EntryPoint("backward_op", "void", _args(CTX, "const {real} * input", "size_t batch", "uint64_t seed", "int op"),
               "Profiling: runs that op's backward alone (an op whose backward another one does, the loss or a "
               "conv through the maxpool after it, has none); it needs a forward pass and the gradients "
               "downstream of op in place.", "loss"),
    EntryPoint("all_finite", "int", _args("const {real} * values", "size_t count"),
               "1 if every one of values[0:count] is a finite number, else 0 (a NaN or an infinity): how the "
               "Python module checks its inputs before anything runs.", "training"),
    EntryPoint("set_threads", "int", _args("int threads"),
               "Threads for the calls that follow (threads > 0; 0 only asks): the count in effect. Compiled "
               "with OpenMP (-fopenmp), large matrix products split over them with results identical at any "
               "count; otherwise everything runs on the caller's thread and this returns 1.", "all"),
)


@dataclass(frozen=True)
class StructField:
    ctype: str
    name: str
    doc: str = ""


TRAINING_CONTEXT = (
    StructField("{real} *", "params", "[NUM_PARAMS]; trainable ones first"),
    StructField("{real} *", "grads", "[NUM_TRAINABLE]: the trainable parameters' gradients; training only"),
    StructField("{real} *", "optimizer_state", "[OPTIMIZER_STATE_SIZE]; training only"),
    StructField("{real} *", "activations", "[activations_size(batch)]"),
    StructField("{real} *", "grad_activations", "[activations_size(batch)]; training only"),
    StructField("{real} *", "workspace", "[WORKSPACE_SIZE]"),
)
INFERENCE_CONTEXT = (
    StructField("const {real} *", "params", "[NUM_PARAMS]: only read, so it may point at flash"),
    StructField("{real} *", "arena", "[ARENA_SIZE]: activations, then the workspace"),
)


def _fill(text: str, program) -> str:
    loss = program.loss
    return text.format(real=program.c_type, target=program.target_type, model=c_ident(program.name),
                       loss=loss.kind if loss else "", targets=loss.rules.targets_doc if loss else "",
                       optimizer=program.optimizer.type)


def _wanted(entry: EntryPoint, program) -> bool:
    inference = program.deployment.inference_only
    return {"all": True, "inference": inference, "training": not inference,
            "loss": not inference and program.loss is not None}[entry.builds]


def entry_points(program) -> list[EntryPoint]:
    return [entry for entry in ENTRY_POINTS if _wanted(entry, program)]


def declaration(entry: EntryPoint, program) -> str:
    """The C prototype, without the semicolon."""
    args = ", ".join(_field(arg.ctype, arg.name, program) for arg in entry.args)
    return _field(entry.returns, f"{c_ident(program.name)}_{entry.suffix}({args})", program)


def documentation(entry: EntryPoint, program) -> str:
    return c_comment(_fill(entry.doc, program).replace("NAME_", f"{program.name}_"))


def context_fields(program) -> list[tuple[str, str]]:
    """(declaration, comment) of each field of NAME_context."""
    fields = INFERENCE_CONTEXT if program.deployment.inference_only else TRAINING_CONTEXT
    return [(_field(f.ctype, f.name, program), c_comment(f.doc)) for f in fields]


def hyper_fields(program) -> list[tuple[str, str]]:
    """(C type, name) of NAME_hyper: lr, the optimizer's own hyper-parameters, the step count."""
    rules = optimizer_kind(program.optimizer.type)
    own = [("int" if isinstance(f.default, bool) else "double", c_ident(name))
           for name, f in rules.fields.items() if name != "lr"]
    return [("double", "lr"), *own, ("long", "step")]


def _field(ctype: str, name: str, program) -> str:
    ctype = _fill(ctype, program)
    return f"{ctype}{'' if ctype.endswith('*') else ' '}{name}"


def public_macros(program) -> list[tuple[str, int, str]]:
    """(name, value, comment) of the header's integer macros (cffi reads them too)."""
    upper = c_ident(program.name).upper()
    deployment = program.deployment
    macros = [("NUM_PARAMS", program.num_params, ""), ("NUM_TRAINABLE", program.num_trainable, ""),
              ("INPUT_SIZE", program.input.size, ""), ("OUTPUT_SIZE", program.output.size, ""),
              ("ACTIVATIONS_PER_SAMPLE", program.activation_size, ""),
              ("WORKSPACE_SIZE", program.workspace_size, "")]
    if deployment.inference_only:
        macros += [("BATCH", deployment.batch, "samples per forward call"),
                   ("ARENA_SIZE", deployment.arena_size, "ACTIVATIONS_PER_SAMPLE * BATCH + WORKSPACE_SIZE")]
        if deployment.constants:
            macros.append(("CONSTANTS_SIZE", deployment.constants_size, "derived from the weights at emit time"))
    else:
        macros += [("OPTIMIZER_STATE_SIZE", program.optimizer_state_size, ""), ("NUM_OPS", len(program.ops), "")]
    return [(f"{upper}_{name}", int(c_int(value)), comment) for name, value, comment in macros]


def cdef(program) -> str:
    """What cffi needs to call the module: the macros, the structs and the prototypes."""
    model = c_ident(program.name)
    lines = [f"#define {name} {value}" for name, value, _ in public_macros(program)]
    lines.append(f"typedef struct {model}_context {{")
    lines += [f"    {decl};" for decl, _ in context_fields(program)]
    lines.append(f"}} {model}_context;")
    if not program.deployment.inference_only and program.loss is not None:
        lines.append(f"typedef struct {model}_hyper {{")
        lines += [f"    {ctype} {name};" for ctype, name in hyper_fields(program)]
        lines.append(f"}} {model}_hyper;")
    lines += [declaration(entry, program) + ";" for entry in entry_points(program)]
    return "\n".join(lines) + "\n"


class Bindings:
    """The entry points of a loaded module as Python attributes (`bindings.forward(...)`), and the
    constructors of its structs: the one place Python turns an entry point into a C name."""

    def __init__(self, ffi, lib, program):
        self.ffi, self.lib = ffi, lib
        self._model = c_ident(program.name)
        for entry in entry_points(program):
            setattr(self, entry.suffix, getattr(lib, f"{self._model}_{entry.suffix}"))
        self.has_hyper = not program.deployment.inference_only and program.loss is not None
        self.hyper_names = tuple(name for _, name in hyper_fields(program)) if self.has_hyper else ()

    def new_context(self):
        return self.ffi.new(f"{self._model}_context *")

    def new_hyper(self):
        return self.ffi.new(f"{self._model}_hyper *")

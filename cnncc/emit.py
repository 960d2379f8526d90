"""Standalone C for deployment: `cnncc emit SPEC -o DIR [--weights W.npz] [--inference-only]`.

Writes NAME.h and NAME.c from the same templates and the same IR as the Python module
(codegen.render); with weights, NAME_weights.c holding them as exact hexadecimal float
constants; an example main.c, a Makefile and a README. A full build keeps the Python
module's API (forward, loss, backward, optimizer step: a C program can train on its own).
An inference-only build renders the program at memplan's offsets with a fixed batch: one
static arena, no loss, no backward, no allocation and no stdio in the model files.
Nothing reaches the files that was not validated: the spec by the checker, the weights
by the same checks as `Model.load`, and every value by the template filters (weights by
`c_hex_float` below).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .codegen import c_comment, c_ident, environment, render
from .ir import Deployment, Program
from .memplan import MemoryPlan, deployment_figures, inference_program, plan
from .pipeline import analyse
from .report import build_report
from .spec import Spec
from .version import __version__

LITERALS_PER_LINE = 6
EXAMPLE = "main"  # the example program's file stem: a model may not take it
PRINT_DIGITS = {"float32": 9, "float64": 17}  # enough to round-trip a printed output
FLOAT_SUFFIX = {"float32": "f", "float64": ""}


@dataclass(frozen=True)
class Emitted:
    directory: Path
    files: tuple[Path, ...]
    program: Program  # what was rendered
    memory: MemoryPlan
    figures: dict  # weight_bytes, arena_bytes, arena_bytes_unshared, arena_batch


class _Weights:
    """What `checkpoint.load` fills and validates, as for a Model, without compiling one."""

    def __init__(self, spec: Spec, program: Program):
        self.spec = spec
        self.flat = np.zeros(program.num_params, np.dtype(program.dtype))
        self.params = {p.key: self.flat[p.offset:p.offset + p.size].reshape(p.shape) for p in program.params}
        self.flat_optimizer_state = np.zeros(program.optimizer_state_size, self.flat.dtype)
        self.step_count = 0


def read_weights(spec: Spec, program: Program, path) -> np.ndarray:
    """The flat parameter vector of a weights file, validated exactly as `Model.load` does."""
    from .checkpoint import load

    holder = _Weights(spec, program)
    load(holder, path)
    return holder.flat


def c_hex_float(value, dtype: str) -> str:
    """An exact C hexadecimal floating constant of a finite value of the given dtype."""
    if isinstance(value, bool) or not isinstance(value, (float, np.floating)) or not math.isfinite(value):
        raise ValueError(f"not a finite float: {value!r}")
    if dtype not in FLOAT_SUFFIX or float(np.dtype(dtype).type(value)) != float(value):
        raise ValueError(f"{value!r} is not a {dtype} value")
    mantissa, exponent = float(value).hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}{FLOAT_SUFFIX[dtype]}"


def _weight_sections(program: Program, flat: np.ndarray) -> list[dict]:
    sections = []
    for p in program.params:
        values = [c_hex_float(v, program.dtype) for v in flat[p.offset:p.offset + p.size].tolist()]
        rows = [", ".join(values[i:i + LITERALS_PER_LINE]) for i in range(0, len(values), LITERALS_PER_LINE)]
        sections.append({"param": p, "rows": rows})
    return sections


@dataclass(frozen=True)
class Rendered:
    """Every file of an emit, rendered and not yet written (a board project replaces the
    example program's files with its own: cnncc/boards/project.py)."""
    texts: dict  # file name -> text
    program: Program  # what was rendered
    memory: MemoryPlan
    figures: dict
    context: dict  # what the emit templates read
    weights: bool  # NAME_weights.c is among the texts


def render_emit(spec, weights=None, inference_only: bool = False, batch: int = 1) -> Rendered:
    """The standalone C of a spec (a path, YAML text, dict or Spec), validated and rendered."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    analysis = analyse(spec)
    spec, net, program = analysis.spec, analysis.net, analysis.program
    model = c_ident(program.name)
    if model == EXAMPLE:
        raise ValueError(f"a model named '{EXAMPLE}' would overwrite the example program {EXAMPLE}.c: rename it")
    if program.output.is_input:
        raise ValueError(f"spec '{model}' has no operations: there is nothing to compute")
    flat = read_weights(spec, program, weights) if weights is not None else None
    if flat is not None and not program.num_params:
        raise ValueError(f"spec '{model}' has no parameters: there are no weights to emit")

    memory = plan(program)
    if inference_only:
        rendered = inference_program(program, memory, batch, weights=flat is not None)
    else:
        rendered = replace(program, deployment=Deployment(weights=flat is not None))
    sources = render(rendered, spec.path)

    units = [EXAMPLE, model] + ([f"{model}_weights"] if flat is not None else [])
    figures = deployment_figures(program, batch)
    context = {
        "program": rendered, "model": model, "version": __version__,
        "spec_name": c_comment(Path(spec.path).name), "fingerprint": spec.fingerprint(),
        "weights_name": c_comment(Path(weights).name) if weights is not None else None,
        "units": units, "batch": batch, "print_digits": PRINT_DIGITS[program.dtype],
        "params_buffer": max(1, program.num_params), "figures": figures,
        "training_elements": program.buffer_elements(batch, training=program.loss is not None),
        "report": build_report(net, program, batch).to_markdown(),
    }
    texts = {f"{model}.h": sources.header, f"{model}.c": sources.source}
    env = environment(program.backend)
    if flat is not None:
        texts[f"{model}_weights.c"] = env.get_template("emit/weights.c.j2").render(
            context, sections=_weight_sections(program, flat))
    texts[f"{EXAMPLE}.c"] = env.get_template("emit/main.c.j2").render(context)
    texts["Makefile"] = env.get_template("emit/Makefile.j2").render(context)
    texts["README.md"] = env.get_template("emit/README.md.j2").render(context)
    return Rendered(texts, rendered, memory, figures, context, flat is not None)


def write_rendered(rendered: Rendered, out_dir) -> Emitted:
    """Write the files (the directory is created only now, once everything has rendered)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in rendered.texts.items():
        (out / name).write_text(text)
        files.append(out / name)
    model = rendered.context["model"]
    _remove_stale_weights(out / f"{model}_weights.c", keep=rendered.weights)
    return Emitted(out, tuple(files), rendered.program, rendered.memory, rendered.figures)


def emit(spec, out_dir, weights=None, inference_only: bool = False, batch: int = 1) -> Emitted:
    """Write the standalone C of a spec (a path, YAML text, dict or Spec) into out_dir."""
    return write_rendered(render_emit(spec, weights, inference_only, batch), out_dir)


def _remove_stale_weights(path: Path, keep: bool) -> None:
    """An emit without weights removes the NAME_weights.c an earlier emit with weights wrote there
    (the Makefile would no longer build it, but it would still look like part of the model); a
    file of that name that cnncc did not generate is left alone."""
    if keep or not path.is_file():
        return
    with path.open("rb") as f:
        first = f.readline(200)
    if first.startswith(f"/* {path.name}: generated by cnncc ".encode()):
        path.unlink()


def emit_command(args) -> int:
    if args.board is not None:
        from .boards.command import board_command

        return board_command(args)
    result = emit(args.spec, args.out, args.weights, args.inference_only, args.batch)
    f = result.figures
    print(f"cnncc: wrote {', '.join(p.name for p in result.files)} to {result.directory}")
    print(f"  weights {f['weight_bytes']:,} bytes (flash); inference arena at batch {f['arena_batch']}: "
          f"{f['arena_bytes']:,} bytes (RAM), {f['arena_bytes_unshared']:,} with one buffer per tensor")
    print(f"  build: make -C {result.directory}")
    return 0

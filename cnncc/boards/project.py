"""`cnncc emit SPEC --board NAME -o DIR`: a complete bare-metal project for a board.

The model's files are exactly what `cnncc emit` writes (emit.render_emit); the host example
program is replaced by the board's: startup code with the vector table, a linker script, a
main.c that reads its input (and weights, unless compiled in) and writes its outputs through
semihosting, and a Makefile whose `make run` runs it under QEMU. Every static buffer main.c
declares is listed here first (`buffers`), so the RAM the project needs is known before
anything is written, and a model that does not fit the board stops with both figures.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..codegen import environment
from ..cvalues import c_float
from ..emit import EXAMPLE, Emitted, render_emit, write_rendered
from ..ir import Program
from . import board as board_named
from .base import Board

# The files main.c reads and writes through semihosting, in the directory QEMU runs in.
FILES = {"input": "input.bin", "output": "output.bin", "weights": "weights.bin", "targets": "targets.bin",
         "params": "params.bin"}
BOARD_UNITS = ("startup", "board")  # startup.c, board.h: a model of either name would overwrite them


@dataclass(frozen=True)
class Buffer:
    """A static array main.c declares (in .bss)."""
    name: str  # the C name, as main.c uses it
    ctype: str  # real or int32_t
    elements: int
    itemsize: int
    doc: str

    @property
    def bytes(self) -> int:
        return self.elements * self.itemsize


@dataclass(frozen=True)
class BoardProject:
    emitted: Emitted
    board: Board
    buffers: tuple[Buffer, ...]
    # bytes of const data the model puts in flash, when its weights are compiled in: the weights
    # and the constants an inference build folds from them (batchnorm's scale and shift)
    flash_data: int

    @property
    def directory(self) -> Path:
        return self.emitted.directory

    @property
    def program(self) -> Program:
        return self.emitted.program

    @property
    def files(self) -> dict[str, str]:
        return FILES

    @property
    def buffer_bytes(self) -> int:
        """RAM of every buffer main.c declares: what .bss holds besides the C library's own."""
        return sum(b.bytes for b in self.buffers)


def buffers(program: Program, batch: int) -> tuple[Buffer, ...]:
    """Every static buffer main.c declares for a (rendered) program at a batch."""
    size, deployment = program.itemsize, program.deployment
    real = "real"
    listed = [Buffer("input", real, program.input.size * batch, size, f"[BATCH, INPUT_SIZE] ({batch} per call)")]
    if deployment.inference_only:
        listed.insert(0, Buffer("arena", real, deployment.arena_size, size,
                                "ARENA_SIZE: planned activations, then the workspace"))
    else:
        docs = {"params": "NUM_PARAMS, trainable first", "activations": "ACTIVATIONS_PER_SAMPLE * BATCH",
                "workspace": "WORKSPACE_SIZE", "grads": "NUM_TRAINABLE", "grad_activations":
                "ACTIVATIONS_PER_SAMPLE * BATCH", "optimizer_state": "OPTIMIZER_STATE_SIZE"}
        # an empty buffer (no optimizer state for plain SGD, no workspace) is not declared: its
        # context field is NULL, so what main.c allocates is exactly buffer_elements
        elements = program.buffer_elements(batch, training=True)
        listed = [Buffer(name, real, n, size, docs[name]) for name, n in elements.items() if n] + listed
        labels = program.loss.takes_labels
        listed.append(Buffer("targets", "int32_t" if labels else real,
                             batch * (1 if labels else program.output.size), 4 if labels else size,
                             "class labels [BATCH]" if labels else "[BATCH, OUTPUT_SIZE]"))
    if deployment.inference_only and not deployment.weights:
        listed.append(Buffer("params", real, max(1, program.num_params), size, "NUM_PARAMS, read from weights.bin"))
    return tuple(listed)


def check_fits(board: Board, model: str, ram: int, flash: int,
               ram_hint: str = "try --inference-only, a smaller batch or frozen layers",
               flash_hint: str = "emit without --weights to read them at run time") -> None:
    """Stop (before anything is written) when the model's buffers or const data overflow the board;
    the hints say what would help (the int8 project, cnncc/boards/int8.py, has its own)."""
    reserve = board.stack_bytes + board.heap_bytes
    if ram + reserve > board.ram.length:
        raise ValueError(
            f"model '{model}' does not fit the {board.name}'s RAM: its buffers need {ram:,} bytes, plus "
            f"{reserve:,} for the stack and heap, and the board has {board.ram.length:,} ({board.ram.doc}); "
            f"{ram_hint}")
    if flash > board.flash.length:
        raise ValueError(
            f"model '{model}' does not fit the {board.name}'s flash: its weights need {flash:,} bytes and the "
            f"board has {board.flash.length:,} ({board.flash.doc}); {flash_hint}")


def _hex(value: int) -> str:
    return f"0x{value:08X}"


def emit_board(spec, out_dir, board: str, weights=None, inference_only: bool = False, batch: int = 1) -> BoardProject:
    """Write the bare-metal project of a spec for a board into out_dir."""
    target = board_named(board)  # an unknown board stops here, before any analysis
    rendered = render_emit(spec, weights, inference_only, batch)
    program, model = rendered.program, rendered.context["model"]
    if model in BOARD_UNITS:
        raise ValueError(f"a model named '{model}' would overwrite the board's {model} files: rename it")
    if not inference_only and (program.loss is None or not program.num_params):
        raise ValueError(f"spec '{model}' has no {'loss' if program.loss is None else 'parameters'}, so it cannot "
                         "train on the board: use --inference-only")
    listed = buffers(program, batch)
    flash_data = (program.num_params + program.deployment.constants_size) * program.itemsize if rendered.weights else 0
    check_fits(target, model, sum(b.bytes for b in listed), flash_data)

    env = environment(program.backend)
    qemu = target.qemu_command("main.elf")
    context = {**rendered.context, "board": target, "buffers": listed, "files": FILES,
               "timer": target.timer_registers(), "qemu": " ".join(qemu),
               "qemu_count": " ".join(target.qemu_command("main.elf", count_instructions=True)),
               "hex": {"flash_origin": _hex(target.flash.origin), "flash_length": _hex(target.flash.length),
                       "ram_origin": _hex(target.ram.origin), "ram_length": _hex(target.ram.length)},
               "ram_needed": sum(b.bytes for b in listed), "flash_data": flash_data}
    if not inference_only:
        rules = program.optimizer_rules
        hyper = {**rules.defaults(), **program.optimizer.settings, "lr": program.optimizer.lr}
        context["hyper"] = [(name, str(int(bool(hyper[name]))) if isinstance(hyper[name], bool) else c_float(hyper[name]))
                            for name in rules.fields]
        declared = {b.name for b in listed}
        context["context_fields"] = [(name, name if name in declared else "NULL")
                                     for name in program.buffer_elements(batch, training=True)]
        context["targets_per_sample"] = 1 if program.loss.takes_labels else program.output.size
        context["target_doc"] = ("int32 class labels, one per sample" if program.loss.takes_labels
                                 else f"raw {program.c_type} targets shaped like the output")
    folder = target.template_folder
    texts = {name: text for name, text in rendered.texts.items()
             if name not in (f"{EXAMPLE}.c", "Makefile", "README.md")}
    main = "main.c.j2" if inference_only else "main_training.c.j2"
    for name, template in ((f"{EXAMPLE}.c", main), ("startup.c", "startup.c.j2"), ("board.h", "board.h.j2"),
                           ("link.ld", "link.ld.j2"), ("Makefile", "Makefile.j2"), ("README.md", "README.md.j2")):
        texts[name] = env.get_template(f"{folder}/{template}").render(context)
    emitted = write_rendered(replace(rendered, texts=texts), out_dir)
    return BoardProject(emitted, target, listed, flash_data)

"""`cnncc emit SPEC --int8 Q.npz --board NAME -o DIR [--build]`: the int8 model on a board.

The model's files are exactly what `cnncc emit --int8` writes (quantize/emit.render_int8); the
board adds its startup code, linker script, board.h and Makefile (the float project's templates,
unchanged) and an int8 main.c (templates/boards/<name>/int8/main.c.j2) that reads float32
samples through semihosting, quantizes each at the boundary, runs the int8 model and prints the
dequantized outputs as the host int8 main.c does. The int8 weights and words are const (flash),
the arena and the input sample static (RAM); both are known before anything is written, and a
model that does not fit stops with both figures (project.check_fits).

The boundary is two tables made by cnncc/quantize/boundary.py, so the device needs no double
arithmetic and still equals QuantizedModel.predict exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen import environment
from ..quantize.boundary import input_thresholds, output_texts
from ..quantize.emit import EXAMPLE, render_int8, write_texts
from . import board as board_named
from .base import Board
from .measure import Run, run
from .project import BOARD_UNITS, FILES, Buffer, check_fits

FLOAT_BYTES = 4
_NUMBER_TEXT = re.compile(r"-?[0-9.]+(e[-+][0-9]+)?")  # what %.9g writes for a finite value


@dataclass(frozen=True)
class Int8BoardProject:
    directory: Path
    board: Board
    model: str  # the C name
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    buffers: tuple[Buffer, ...]  # main.c's static arrays (.bss)
    weight_bytes: int  # the model's int8 weights and int32 words: `cnncc check --int8`'s figure
    arena_bytes: int  # `cnncc check --int8`'s figure
    table_bytes: dict[str, int]  # main.c's boundary tables (.rodata): C name -> bytes

    @property
    def files(self) -> dict[str, str]:
        return FILES

    @property
    def buffer_bytes(self) -> int:
        return sum(b.bytes for b in self.buffers)

    @property
    def flash_data(self) -> int:
        """Const data in flash: the weights and words, then main.c's boundary tables."""
        return self.weight_bytes + sum(self.table_bytes.values())


def _float32_literal(value: np.float32) -> float:
    """The shortest decimal that reads back as this float32 (a C float literal, with an f suffix),
    as a Python float for the c_float filter."""
    short = float(str(np.float32(value)))
    assert np.float32(short) == value, value
    return short


def emit_int8_board(spec, quantized, out_dir, board: str) -> Int8BoardProject:
    """Write the bare-metal project of a quantized model for a board into out_dir."""
    target = board_named(board)  # an unknown board stops here, before any analysis
    rendered = render_int8(spec, quantized)
    model, graph, layout, values = rendered.model, rendered.graph, rendered.layout, rendered.values
    if model in BOARD_UNITS:
        raise ValueError(f"a model named '{model}' would overwrite the board's {model} files: rename it")
    input_size = graph.tensors[graph.input].size
    listed = (Buffer("arena", "int8_t", max(1, layout.arena_bytes), 1, "ARENA_SIZE: the planned int8 tensors, "
                     "then the conv patch"),
              Buffer("sample", "float", input_size, FLOAT_BYTES, "INPUT_SIZE float32 values, before quantizing"))
    thresholds = input_thresholds(values.scales[graph.input], values.zero_points[graph.input])
    texts = output_texts(values.scales[graph.output], values.zero_points[graph.output])
    assert all(_NUMBER_TEXT.fullmatch(t) for t in texts), texts
    text_width = max(map(len, texts)) + 1  # and its terminating zero
    tables = {"input_threshold": thresholds.size * FLOAT_BYTES, "output_text": len(texts) * text_width}
    project = Int8BoardProject(Path(out_dir), target, model, tuple(graph.tensors[graph.input].shape),
                               tuple(graph.tensors[graph.output].shape), listed, layout.weight_bytes,
                               layout.arena_bytes, tables)
    check_fits(target, model, project.buffer_bytes, project.flash_data,
               ram_hint="the int8 arena is planned by liveness already: a smaller network is the way",
               flash_hint="a smaller network is the way")

    env = environment("vector")
    units = [EXAMPLE, model, f"{model}_weights"]
    context = {**rendered.context, "board": target, "buffers": listed, "files": FILES, "units": units,
               "timer": target.timer_registers(), "hex": target.memory_map_hex(),
               "qemu": " ".join(target.qemu_command("main.elf")),
               "qemu_count": " ".join(target.qemu_command("main.elf", count_instructions=True)),
               "thresholds": [_float32_literal(t) for t in thresholds], "output_texts": texts,
               "text_width": text_width, "project": project}
    folder = target.template_folder
    files = dict(rendered.texts)
    for name, template in ((f"{EXAMPLE}.c", "int8/main.c.j2"), ("startup.c", "startup.c.j2"),
                           ("board.h", "board.h.j2"), ("link.ld", "link.ld.j2"), ("Makefile", "Makefile.j2"),
                           ("README.md", "int8/README.md.j2")):
        files[name] = env.get_template(f"{folder}/{template}").render(context)
    write_texts(files, out_dir)
    return project


def parse_outputs(stdout: str, output_size: int) -> tuple[np.ndarray, list[int]]:
    """(dequantized outputs float32 [N, output_size], classes) from what an int8 main.c prints: per
    sample a line of its outputs and a line `class: K` (the host's and the board's alike)."""
    lines = stdout.splitlines()
    rows = [line for line, after in zip(lines, lines[1:]) if after.startswith("class: ")]
    outputs = np.array([[float(v) for v in row.split()] for row in rows], np.float32).reshape(len(rows), output_size)
    return outputs, [int(line.split(": ")[1]) for line in lines if line.startswith("class: ")]


def infer_int8_on_device(project: Int8BoardProject, x, count_instructions: bool = False,
                         timeout: float = 600) -> tuple[np.ndarray, list[int], Run]:
    """(outputs [N, *output_shape] float32, classes, Run): the built project run on float inputs x."""
    x = np.ascontiguousarray(x, np.float32)
    x.tofile(project.directory / FILES["input"])
    result = run(project.directory, project.board, count_instructions, timeout)
    if result.returncode != 0:
        raise RuntimeError(f"int8 inference on the device failed (QEMU exit status {result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    outputs, classes = parse_outputs(result.stdout, int(np.prod(project.output_shape)))
    return outputs.reshape((len(outputs), *project.output_shape)), classes, result


def forward_ticks(result: Run) -> list[int]:
    """The timer ticks of each sample's forward call, which the int8 main.c reports on stderr."""
    return [int(t) for t in re.findall(r"^forward: (\d+) timer ticks$", result.stderr, re.M)]


def stack_used(result: Run) -> int:
    """The stack's high-water mark in bytes, which the int8 main.c reports on stderr last."""
    return int(result.stderr.rsplit("stack: ", 1)[1].split()[0])


def memory_rows(project: Int8BoardProject, sections: dict[str, int], symbols: dict[str, int]):
    """(what, measured bytes, predicted) rows: the ELF's flash and RAM against the plan."""
    weights = f"{project.model}_weights", f"{project.model}_words"
    rows = [(".text (code)", sections.get(".text", 0), "-"),
            (".rodata (weights, tables)", sections.get(".rodata", 0), f"const data {project.flash_data:,}"),
            (f"  {' + '.join(weights)}", sum(symbols.get(s, 0) for s in weights),
             f"{project.weight_bytes:,} (cnncc check --int8)")]
    rows += [(f"  {name}", symbols.get(name, 0), f"{size:,}") for name, size in project.table_bytes.items()]
    rows += [(".data", sections.get(".data", 0), "-"),
             (".bss (buffers, C library)", sections.get(".bss", 0), f"buffers {project.buffer_bytes:,}")]
    for b in project.buffers:
        rows.append((f"  {b.name}", symbols.get(b.name, 0),
                     f"{project.arena_bytes:,} (cnncc check --int8)" if b.name == "arena" else f"{b.bytes:,}"))
    return rows


def int8_board_command(args) -> int:

    project = emit_int8_board(args.spec, args.int8, args.out, args.board)
    board = project.board
    print(f"cnncc: wrote the {board.name} project of the int8 model '{project.model}' to {project.directory}")
    print(f"  predicted: const data {project.flash_data:,} bytes in flash (int8 weights {project.weight_bytes:,}); "
          f"buffers {project.buffer_bytes:,} bytes of RAM (int8 arena {project.arena_bytes:,}; + "
          f"{board.stack_bytes:,} stack, {board.heap_bytes:,} heap reserved)")
    from .command import build_and_report

    return build_and_report(project, board, args.build, memory_rows)


__all__ = ["Int8BoardProject", "emit_int8_board", "infer_int8_on_device", "int8_board_command", "memory_rows",
           "parse_outputs"]

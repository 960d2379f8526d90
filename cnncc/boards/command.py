"""`cnncc emit SPEC --board NAME -o DIR [--build]`: write the project and, with --build, build it
and print its memory, measured on the ELF next to what cnncc predicted."""
from __future__ import annotations

from . import board as board_named
from .measure import RAM_SECTIONS, build, section_sizes, symbol_sizes
from .project import BoardProject, emit_board


def memory_rows(project: BoardProject, sections: dict[str, int], symbols: dict[str, int]) -> list[tuple[str, int, str]]:
    """(what, measured bytes, predicted) rows: flash and RAM of the ELF against the plan."""
    f = project.emitted.figures
    rows = [(".text (code)", sections.get(".text", 0), "-"),
            (".rodata (weights, constants)", sections.get(".rodata", 0), f"weights {project.flash_data:,}"),
            (".data", sections.get(".data", 0), "-"),
            (".bss (buffers, C library)", sections.get(".bss", 0), f"buffers {project.buffer_bytes:,}")]
    for b in project.buffers:
        predicted = f"{f['arena_bytes']:,} (cnncc check)" if b.name == "arena" else f"{b.bytes:,}"
        rows.append((f"  {b.name}", symbols.get(b.name, 0), predicted))
    return rows


def board_command(args) -> int:
    board = board_named(args.board)
    project = emit_board(args.spec, args.out, board.name, args.weights, args.inference_only, args.batch)
    print(f"cnncc: wrote the {board.name} project of '{project.program.name}' to {project.directory}")
    print(f"  predicted: weights {project.flash_data:,} bytes in flash; buffers {project.buffer_bytes:,} bytes "
          f"of RAM (+ {board.stack_bytes:,} stack, {board.heap_bytes:,} heap reserved)")
    return build_and_report(project, board, args.build, memory_rows)


def build_and_report(project, board, build_it: bool, rows) -> int:
    """How to build a written project, or (`--build`) build its ELF and print every measured figure
    beside its prediction: `rows(project, sections, symbols)` gives (what, measured, predicted)."""
    if not build_it:
        print(f"  build: make -C {project.directory}; run: make -C {project.directory} run")
        return 0
    elf = build(project.directory, board)
    sections, symbols = section_sizes(elf, board), symbol_sizes(elf, board)
    print(f"  built {elf}")
    for what, measured, predicted in rows(project, sections, symbols):
        print(f"  {what:<32} {measured:>10,}   predicted {predicted}")
    print(f"  RAM {sum(sections.get(s, 0) for s in RAM_SECTIONS):,} bytes (.data + .bss) plus the stack "
          "(make run prints its high-water mark)")
    return 0

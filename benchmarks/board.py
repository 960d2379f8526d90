"""Every spec on the emulated Cortex-M4 (QEMU mps2-an386): memory measured on the ELF next to
what cnncc predicts, code size, the stack's high-water mark and instructions per inference.

    python benchmarks/board.py [--out DIR] [SPEC ...]      (default: every spec in specs/)

Each spec is emitted with --board mps2-an386 --inference-only at batch 1 with its weights compiled
in (const, in flash), built with arm-none-eabi-gcc, run under `qemu-system-arm -icount shift=0`
(one nanosecond per instruction, so the 25 MHz timer ticks every 40 instructions) on 2 random
samples whose outputs are checked against Model.predict, and measured with arm-none-eabi-size/-nm.
A spec whose training build (batch 1) fits the board's RAM is also built for training and its
buffers measured. Prints the README's markdown tables.

    python benchmarks/board.py --int8 [SPEC ...]           (default: LeNet-5, DS-CNN, ResNet-8)

measures the int8 models instead (`cnncc emit --int8 --board`): each spec with init(0) weights is
quantized on CALIBRATION random samples, built, run on SAMPLES random samples whose outputs must equal
QuantizedModel.predict's exactly, and measured the same way (the int8 main.c reports its timer ticks
and the stack's high-water mark on stderr).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cnncc  # noqa: E402
from cnncc.boards import board as board_named  # noqa: E402
from cnncc.boards.int8 import emit_int8_board, forward_ticks, infer_int8_on_device, stack_used  # noqa: E402
from cnncc.boards.measure import build, infer_on_device, object_text, section_sizes, symbol_sizes  # noqa: E402
from cnncc.boards.project import emit_board  # noqa: E402

BOARD = "mps2-an386"
SAMPLES = 2
CALIBRATION = 32  # random samples the int8 models are calibrated on
INT8_SPECS = ("lenet5", "ds_cnn", "resnet8")


def measure(spec: Path, work: Path) -> dict:
    board = board_named(BOARD)
    model = cnncc.compile(spec, build_dir=work / "cache").init(0)
    weights = work / f"{spec.stem}.npz"
    model.save(weights)
    project = emit_board(spec, work / spec.stem, BOARD, weights, inference_only=True, batch=1)
    elf = build(project.directory, board)
    x = np.random.default_rng(0).standard_normal((SAMPLES, *model.input_shape)).astype(model.dtype)
    outputs, result = infer_on_device(project, x, count_instructions=True)
    expected = model.predict(x)
    sections, symbols = section_sizes(elf, board), symbol_sizes(elf, board)
    name = project.program.name
    row = {"spec": name, "text": sections[".text"], "model_text": object_text(project.directory / f"{name}.o", board),
           "rodata": sections[".rodata"], "weights": project.flash_data, "data": sections.get(".data", 0),
           "bss": sections[".bss"], "arena": symbols["arena"], "arena_predicted": project.emitted.figures["arena_bytes"],
           "stack": result.stack_used,
           "instructions": statistics.median(result.ticks) * board.instructions_per_tick(),
           "error": float(np.abs(outputs - expected).max() / np.abs(expected).max())}
    training = cnncc.check(spec, batch=1)
    try:
        train = emit_board(spec, work / f"{spec.stem}_training", BOARD, weights, batch=1)
    except ValueError as exc:
        row["training"] = str(exc).split(":", 1)[0]
    else:
        train_elf = build(train.directory, board)
        train_symbols = symbol_sizes(train_elf, board)
        # the model's buffers (what `cnncc check` reports), not main.c's input and targets
        own = training.program.buffer_elements(1, training=True)
        row["training_buffers"] = sum(train_symbols.get(name, 0) for name in own)
        row["training_check"] = training.program.buffer_bytes(1, training=True)
    return row


def measure_int8(spec: Path, work: Path) -> dict:
    board = board_named(BOARD)
    model = cnncc.compile(spec, build_dir=work / "cache").init(0)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((CALIBRATION, *model.input_shape)).astype(np.float32)
    quantized = model.quantize(calibration, build_dir=work / "cache")
    q_file = work / f"{spec.stem}_q.npz"
    quantized.save(q_file)
    project = emit_int8_board(spec, q_file, work / f"{spec.stem}_int8", BOARD)
    elf = build(project.directory, board)
    x = rng.standard_normal((SAMPLES, *model.input_shape)).astype(np.float32)
    outputs, _, result = infer_int8_on_device(project, x, count_instructions=True)
    if not np.array_equal(outputs, quantized.predict(x)):
        raise RuntimeError(f"{spec.stem}: the device's int8 outputs differ from QuantizedModel.predict's")
    sections, symbols = section_sizes(elf, board), symbol_sizes(elf, board)
    name = project.model
    return {"spec": spec.stem, "weights": symbols[f"{name}_weights"] + symbols[f"{name}_words"],
            "weights_predicted": project.weight_bytes, "tables": sum(project.table_bytes.values()),
            "arena": symbols["arena"], "arena_predicted": project.arena_bytes, "sample": symbols["sample"],
            "model_text": object_text(project.directory / f"{name}.o", board), "text": sections[".text"],
            "stack": stack_used(result),
            "instructions": statistics.median(forward_ticks(result)) * board.instructions_per_tick()}


def int8_table(rows: list[dict]) -> str:
    lines = ["| spec | int8 weights (flash): measured / predicted | boundary tables (flash) | "
             "int8 arena (RAM): measured / predicted | float32 input (RAM) | model code | ELF `.text` | "
             "stack high-water | instructions per inference (`-icount`) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['weights']:,} / {r['weights_predicted']:,} B | {r['tables']:,} B | "
                     f"{r['arena']:,} / {r['arena_predicted']:,} B | {r['sample']:,} B | {r['model_text']:,} B | "
                     f"{r['text']:,} B | {r['stack']:,} B | {r['instructions']:,.0f} |")
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    lines = ["| spec | .text (model's own) | .rodata (weights) | .data | .bss | arena measured / predicted | "
             "stack high-water | instructions per inference | max error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['text']:,} ({r['model_text']:,}) | {r['rodata']:,} ({r['weights']:,}) | "
                     f"{r['data']:,} | {r['bss']:,} | {r['arena']:,} / {r['arena_predicted']:,} | {r['stack']:,} | "
                     f"{r['instructions']:,.0f} | {r['error']:.1e} |")
    lines += ["", "| spec | training buffers at batch 1: measured / `cnncc check --batch 1` |", "|---|---:|"]
    for r in rows:
        if "training_buffers" in r:
            lines.append(f"| {r['spec']} | {r['training_buffers']:,} / {r['training_check']:,} |")
        else:
            lines.append(f"| {r['spec']} | does not fit: {r['training']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where the projects go (default: a temporary directory)")
    parser.add_argument("--int8", action="store_true", help="the int8 models (cnncc emit --int8 --board)")
    args = parser.parse_args(argv)
    default = [ROOT / "specs" / f"{stem}.yaml" for stem in INT8_SPECS] if args.int8 else sorted(
        (ROOT / "specs").glob("*.yaml"))
    specs = args.specs or default
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        rows = []
        for spec in specs:
            rows.append(measure_int8(spec, work) if args.int8 else measure(spec, work))
            print(f"{spec.stem}: done", file=sys.stderr)
    print(int8_table(rows) if args.int8 else tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""cnncc emit --int8 Q.npz --board: int8 models on the emulated Cortex-M4 (QEMU mps2-an386).

The outputs the device prints must be exactly QuantizedModel.predict's (the kernels are integer
and bit-exact; the boundary is tables that reproduce Python's float64 quantization with float32
comparisons), and the ELF's int8 weights and arena exactly `cnncc check --int8`'s figures. The
device tests need arm-none-eabi-gcc and qemu-system-arm (tests/tools.py: a failure in CI).
"""
import re
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.boards import board as board_named
from cnncc.boards.base import Region
from cnncc.boards.int8 import emit_int8_board, forward_ticks, infer_int8_on_device, parse_outputs, stack_used
from cnncc.boards.measure import build, run, section_sizes, symbol_sizes
from cnncc.boards.mps2_an386 import Mps2An386
from cnncc.cli import main
from cnncc.quantize.boundary import dequantize_real, input_thresholds, output_texts, quantize_real
from cnncc.quantize.cli import int8_figures
from test_board import BOARD, need_toolchain

ROOT = Path(__file__).resolve().parent.parent
DEVICE_SPECS = ("lenet5", "ds_cnn", "resnet8")
CALIBRATION = 32  # random samples: enough to give every tensor a range
SAMPLES = 2  # run on the device per spec, besides the sample made of thresholds


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, build_dir):
    """spec stem -> (spec path, Q.npz path, QuantizedModel), each quantized once for the module."""
    root = tmp_path_factory.mktemp("int8board")
    made = {}

    def get(stem):
        if stem not in made:
            spec = ROOT / "specs" / f"{stem}.yaml"
            model = cnncc.compile(spec, build_dir=build_dir).init(11)
            x_cal = np.random.default_rng(12).standard_normal((CALIBRATION, *model.input_shape)).astype(np.float32)
            q = model.quantize(x_cal, build_dir=build_dir)
            q.save(root / f"{stem}_q.npz")
            made[stem] = spec, root / f"{stem}_q.npz", q
        return made[stem]

    return get


# ---- the boundary tables, without the tools ---------------------------------------------

@pytest.mark.parametrize("scale, zero", [(0.0123456789, -3), (1 / 255, -128), (0.1, 127), (3.7e-5, 10),
                                         (0.02, 0)])
def test_input_thresholds_quantize_as_python_does(scale, zero):
    """-128 + (thresholds reached) equals quantize_real on every float32 next to a threshold (where
    the rounding decides), on random values across the range, on both zeros and on the extremes."""
    thresholds = input_thresholds(scale, zero)
    assert thresholds.dtype == np.float32 and thresholds.shape == (255,) and np.all(np.diff(thresholds) >= 0)
    near = [np.nextafter(thresholds, np.float32(-np.inf)), thresholds, np.nextafter(thresholds, np.float32(np.inf))]
    spread = np.random.default_rng(1).standard_normal(20_000).astype(np.float32) * np.float32(200 * scale)
    extremes = np.array([0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    x = np.concatenate([*near, spread, extremes]).astype(np.float32)
    assert np.array_equal(-128 + np.searchsorted(thresholds, x, side="right"), quantize_real(x, scale, zero))
    # every level is reached at its threshold and not one float32 below it
    levels = np.arange(-127, 128)
    assert np.array_equal(quantize_real(thresholds, scale, zero), levels)
    assert np.array_equal(quantize_real(near[0], scale, zero), levels - 1)


def test_float32_division_would_not_match():
    """Why the tables: the same quantization in float32 arithmetic (x / float32(scale), rounded)
    differs from the float64 one on some inputs next to a half, so the device cannot simply divide."""
    scale, zero = 0.0123456789, -3
    thresholds = input_thresholds(scale, zero)
    x = np.concatenate([thresholds, np.nextafter(thresholds, np.float32(-np.inf))])
    scaled = x / np.float32(scale)  # float32 throughout
    single = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5)) + zero, -128, 127)
    assert np.any(single != quantize_real(x, scale, zero))


def test_output_texts_read_back_as_the_dequantized_values():
    scale, zero = 0.0283423513, 4
    texts = output_texts(scale, zero)
    assert len(texts) == 256
    assert np.array_equal(np.array(texts, dtype=np.float64).astype(np.float32),
                          dequantize_real(np.arange(-128, 128), scale, zero))


def test_a_scale_no_float32_can_quantize_to_127_is_refused():
    with pytest.raises(ValueError, match="too large"):
        input_thresholds(1e37, 0)


# ---- the project, without the tools -----------------------------------------------------

def test_the_project_holds_the_model_files_and_the_predicted_buffers(quantized, tmp_path):
    spec, q_file, _ = quantized("lenet5")
    project = emit_int8_board(spec, q_file, tmp_path, BOARD)
    figures = int8_figures(spec)
    assert {p.name for p in tmp_path.iterdir()} == {"lenet5.h", "lenet5.c", "lenet5_weights.c", "main.c",
                                                    "startup.c", "board.h", "link.ld", "Makefile", "README.md"}
    main_c = (tmp_path / "main.c").read_text()
    for b in project.buffers:
        assert f"static {b.ctype} {b.name}[{b.elements}];" in main_c
    assert project.arena_bytes == figures["int8_arena_bytes"] == project.buffers[0].bytes
    assert project.weight_bytes == figures["int8_weight_bytes"]
    assert not re.search(r"\bdouble\b", re.sub(r"/\*.*?\*/", "", main_c, flags=re.S))  # no double in its code
    # the model's files are exactly `cnncc emit --int8`'s
    assert main(["emit", str(spec), "--int8", str(q_file), "-o", str(tmp_path / "host")]) == 0
    for name in ("lenet5.h", "lenet5.c", "lenet5_weights.c"):
        assert (tmp_path / name).read_text() == (tmp_path / "host" / name).read_text()


def test_a_model_that_does_not_fit_stops_before_writing(quantized, tmp_path, monkeypatch, capsys):
    spec, q_file, q = quantized("lenet5")
    figures = int8_figures(spec)
    monkeypatch.setattr(Mps2An386, "flash", Region("FLASH", 0, 64 * 1024, "a small flash"))
    out = tmp_path / "out"
    assert main(["emit", str(spec), "--int8", str(q_file), "--board", BOARD, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "does not fit the mps2-an386's flash" in err and "the board has 65,536" in err
    needed = int(err.split("its weights need ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > figures["int8_weight_bytes"]  # the weights and main.c's boundary tables
    assert not out.exists()
    board = board_named(BOARD)
    small = board.stack_bytes + board.heap_bytes + 1000
    monkeypatch.setattr(Mps2An386, "ram", Region("RAM", 0x20000000, small, "a small RAM"))
    assert main(["emit", str(spec), "--int8", str(q_file), "--board", BOARD, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "does not fit the mps2-an386's RAM" in err and f"the board has {small:,}" in err
    sample_bytes = 4 * int(np.prod(q.input_shape))  # main.c's float32 input, before quantizing
    assert f"need {figures['int8_arena_bytes'] + sample_bytes:,} bytes" in err
    assert not out.exists()


def test_parse_outputs_reads_the_host_format():
    outputs, classes = parse_outputs("0.5 -1 2.25\nclass: 2\n1e-05 0 -0.125\nclass: 0\n", 3)
    assert classes == [2, 0] and outputs.dtype == np.float32
    assert np.array_equal(outputs, np.array([[0.5, -1, 2.25], [1e-5, 0, -0.125]], np.float32))


# ---- on the emulated M4 ------------------------------------------------------------------

@pytest.mark.parametrize("stem", DEVICE_SPECS)
def test_int8_models_run_on_the_m4_exactly(stem, quantized, tmp_path):
    """The device's outputs equal QuantizedModel.predict's bit for bit, on random inputs and on an
    input made of the boundary's thresholds and their neighbours (where rounding decides); the ELF's
    weights and arena are exactly `cnncc check --int8`'s; no double arithmetic is linked in."""
    need_toolchain()
    spec, q_file, q = quantized(stem)
    project = emit_int8_board(spec, q_file, tmp_path, BOARD)
    elf = build(project.directory, project.board)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((SAMPLES, *q.input_shape)).astype(np.float32)
    thresholds = input_thresholds(q.values.scales[q.graph.input], q.values.zero_points[q.graph.input])
    edges = np.concatenate([np.nextafter(thresholds, np.float32(-np.inf)), thresholds])
    x = np.concatenate([x, rng.choice(edges, (1, *q.input_shape))]).astype(np.float32)
    outputs, classes, result = infer_int8_on_device(project, x, count_instructions=True)
    expected = q.predict(x)
    assert outputs.shape == expected.shape and np.array_equal(outputs, expected)
    assert classes == list(q.predict_int8(q.quantize_input(x)).reshape(len(x), -1).argmax(axis=1))

    figures = int8_figures(spec)
    symbols, sections = symbol_sizes(elf, project.board), section_sizes(elf, project.board)
    assert symbols[f"{stem}_weights"] + symbols[f"{stem}_words"] == figures["int8_weight_bytes"]
    assert symbols["arena"] == figures["int8_arena_bytes"]
    for name, size in project.table_bytes.items():
        assert symbols[name] == size, name
    for b in project.buffers:
        assert symbols[b.name] == b.bytes, b.name
    assert sections[".rodata"] >= project.flash_data and sections[".bss"] >= project.buffer_bytes
    assert not [s for s in symbols if s.startswith("__aeabi_d") or s in ("__adddf3", "__divdf3", "__muldf3")]

    ticks, stack = forward_ticks(result), stack_used(result)
    assert len(ticks) == len(x) and min(ticks) > 0 and 0 < stack < project.board.stack_bytes


def test_input_errors_on_the_m4(quantized, tmp_path):
    need_toolchain()
    spec, q_file, q = quantized("lenet5")
    project = emit_int8_board(spec, q_file, tmp_path, BOARD)
    build(project.directory, project.board)
    x = np.zeros((1, *q.input_shape), np.float32)
    x[0, 1, 2, 3] = np.nan  # QuantizedModel refuses it too
    with pytest.raises(RuntimeError, match="sample 0 of input.bin holds a value that is not finite"):
        infer_int8_on_device(project, x)
    x.reshape(-1)[:-1].tofile(tmp_path / "input.bin")  # one value short
    result = run(tmp_path, project.board)
    assert result.returncode != 0 and "input.bin ends inside a sample (3071 of 3072 values)" in result.stderr


def test_cli_build_prints_measured_next_to_predicted(quantized, tmp_path, capsys):
    need_toolchain()
    spec, q_file, _ = quantized("ds_cnn")
    assert main(["emit", str(spec), "--int8", str(q_file), "--board", BOARD, "--build", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    figures = int8_figures(spec)
    arena = next(line for line in out.splitlines() if line.strip().startswith("arena"))
    assert arena.split()[1] == f"{figures['int8_arena_bytes']:,}" and f"predicted {figures['int8_arena_bytes']:,}" in arena
    weights = next(line for line in out.splitlines() if "ds_cnn_weights + ds_cnn_words" in line)
    assert f" {figures['int8_weight_bytes']:,}   predicted {figures['int8_weight_bytes']:,}" in weights

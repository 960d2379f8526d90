"""cnncc emit --board: bare-metal projects on the emulated Cortex-M4 (QEMU mps2-an386).

Every spec in specs/ runs its inference build on the M4 and must give Model.predict's outputs;
the buffers the ELF allocates must be exactly what cnncc predicted; the training build trains
on the device exactly as the host does. The device tests need arm-none-eabi-gcc (with newlib)
and qemu-system-arm: skipped locally without them, a failure in CI (tests/tools.py).
"""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.boards import BOARDS, board as board_named
from cnncc.boards.measure import build, infer_on_device, section_sizes, symbol_sizes, train_on_device
from cnncc.boards.project import check_fits, emit_board
from cnncc.cli import main
from cnncc.codegen import template_dir
from cnncc.memplan import deployment_figures
from cnncc.pipeline import analyse, emit_options
from tools import need_command

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
BOARD = "mps2-an386"
RTOL = 1e-5  # float32 on the M4's FPU against the host's build of the same kernels
BOARD_FILES = {"startup.c.j2", "board.h.j2", "link.ld.j2", "main.c.j2", "main_training.c.j2", "Makefile.j2",
               "README.md.j2"}

# A small net for on-device training with the other loss and optimizer: batchnorm's batch
# statistics and a seeded dropout mask run on the device too.
ADAM_NET = {"name": "tiny_adam", "input": {"channels": 1, "height": 8, "width": 8},
            "layers": [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
                       {"type": "batchnorm"}, {"type": "maxpool2d", "kernel": 2}, {"type": "dropout", "rate": 0.25},
                       {"type": "flatten"}, {"type": "dense", "units": 3}],
            "loss": "mse", "optimizer": {"type": "adam", "lr": 0.01}}


def need_toolchain():
    board = board_named(BOARD)
    need_command(board.compiler.command, board.compiler.install)
    need_command(board.emulator.command, board.emulator.install)


def assert_close(got, expected, rtol=RTOL):
    """Elementwise within rtol of each value, or within rtol of a hundredth of the largest one for
    the values smaller than that (a value that is nearly zero after cancellation has no relative
    precision to keep: its absolute error is that of its operands)."""
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-2 * rtol * float(np.abs(expected).max()))


def assert_params_close(program, got, expected):
    """assert_close tensor by tensor (each tensor's own scale)."""
    for p in program.params:
        part = slice(p.offset, p.offset + p.size)
        assert_close(got[part], expected[part])


# ---- without the tools -------------------------------------------------------------------

def test_every_board_has_its_templates_and_every_folder_a_board():
    folders = {p.name for p in (template_dir() / "boards").iterdir() if p.is_dir()}
    assert folders == set(BOARDS)
    for name in BOARDS:
        assert {p.name for p in (template_dir() / "boards" / name).glob("*.j2")} == BOARD_FILES


def test_an_unknown_board_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["emit", str(ROOT / "specs/signal1d.yaml"), "--board", "stm32-nope", "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 1 and "unknown board 'stm32-nope'" in err and BOARD in err and "Traceback" not in err
    assert not out.exists()


def test_a_model_that_does_not_fit_the_ram_stops_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["emit", str(ROOT / "specs/vgg_cifar.yaml"), "--board", BOARD, "-o", str(out)])
    err = capsys.readouterr().err
    program = analyse(ROOT / "specs/vgg_cifar.yaml", emit_options("vector"), batch=1).program  # what emit writes
    needed = program.buffer_bytes(1, training=True) + program.input.size * 4 + 4  # + main.c's input and label
    assert status == 1 and "does not fit the mps2-an386's RAM" in err
    assert f"{board_named(BOARD).ram.length:,}" in err and f"need {needed:,} bytes" in err  # both figures
    assert not out.exists()


def test_weights_that_do_not_fit_the_flash_name_both_figures():
    board = board_named(BOARD)
    with pytest.raises(ValueError, match=rf"flash: its weights need 5,000,000 bytes and the board has "
                                         rf"{board.flash.length:,}"):
        check_fits(board, "big", ram=1000, flash=5_000_000)
    check_fits(board, "fits", ram=board.ram.length - board.stack_bytes - board.heap_bytes, flash=board.flash.length)


def test_a_missing_cross_compiler_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nothing to run
    status = main(["emit", str(ROOT / "specs/signal1d.yaml"), "--board", BOARD, "--inference-only", "--build",
                   "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1 and "'arm-none-eabi-gcc' is not installed" in err
    assert "apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi" in err and "Traceback" not in err


def test_a_missing_emulator_says_what_to_install(tmp_path, monkeypatch):
    from cnncc.boards.measure import run

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match=r"'qemu-system-arm' is not installed \(install it with: "
                                           r"apt-get install -y qemu-system-arm\)"):
        run(tmp_path, board_named(BOARD))


def test_the_project_declares_the_predicted_buffers(tmp_path):
    project = emit_board(ROOT / "specs/lenet5.yaml", tmp_path, BOARD, inference_only=True, batch=2)
    main_c = (tmp_path / "main.c").read_text()
    figures = deployment_figures(cnncc.check(ROOT / "specs/lenet5.yaml").program, 2)
    arena = next(b for b in project.buffers if b.name == "arena")
    assert arena.bytes == figures["arena_bytes"]
    for b in project.buffers:
        assert f"static {b.ctype} {b.name}[{b.elements}];" in main_c
    assert {p.name for p in tmp_path.iterdir()} == {"lenet5.h", "lenet5.c", "main.c", "startup.c", "board.h",
                                                    "link.ld", "Makefile", "README.md"}


# ---- on the emulated M4 ------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_spec_runs_on_the_m4(spec, tmp_path, build_dir):
    """Inference build, weights compiled in (flash): the outputs, the arena and every buffer."""
    need_toolchain()
    board = board_named(BOARD)
    # the host build of the program emit writes: the same kernel plans (VGG's 128-channel convs go
    # by F(2x2) within a device's RAM, by F(4x4) in the default host build), so the outputs agree
    # to float32's rounding; for the other specs it is the default build
    model = cnncc.compile(spec, build_dir=build_dir, options=emit_options("vector")).init(1)
    model.save(tmp_path / "weights.npz")
    project = emit_board(spec, tmp_path / "project", BOARD, tmp_path / "weights.npz", inference_only=True)
    elf = build(project.directory, board)
    samples = 1 if spec.stem == "vgg_cifar" else 2  # QEMU runs vgg_cifar's 40 M MACs in about 7 s
    x = np.random.default_rng(2).standard_normal((samples, *model.input_shape)).astype(np.float32)
    outputs, result = infer_on_device(project, x, count_instructions=True)
    assert_close(outputs, model.predict(x))

    symbols, sections = symbol_sizes(elf, board), section_sizes(elf, board)
    predicted = json.loads(cnncc.check(spec, batch=1).to_json())["totals"]
    assert symbols["arena"] == predicted["arena_bytes"]  # exactly what cnncc check reports
    assert symbols[f"{project.program.name}_weights"] == predicted["weight_bytes"]
    for b in project.buffers:
        assert symbols[b.name] == b.bytes, b.name
    constants = project.program.deployment.constants_size * model.flat_params.itemsize  # batchnorm's, folded
    assert project.flash_data == model.flat_params.nbytes + constants
    assert symbols.get(f"{project.program.name}_constants", 0) == constants
    assert sections[".rodata"] >= project.flash_data and sections[".bss"] >= project.buffer_bytes
    assert 0 < result.stack_used < board.stack_bytes
    ticks = result.ticks
    # -icount: the instructions of a call, counted; they vary only with the data-dependent branches
    # (maxima, clamps, the bilinear border), by well under 1%
    assert len(ticks) == samples and max(ticks) - min(ticks) <= max(1, max(ticks) // 100) and min(ticks) > 0


def test_weights_read_through_semihosting(tmp_path, build_dir):
    need_toolchain()
    spec = ROOT / "specs/signal1d.yaml"
    model = cnncc.compile(spec, build_dir=build_dir).init(3)
    project = emit_board(spec, tmp_path, BOARD, inference_only=True, batch=3)
    build(project.directory, project.board)
    x = np.random.default_rng(4).standard_normal((6, *model.input_shape)).astype(np.float32)
    outputs, _ = infer_on_device(project, x, params=model.flat_params)
    assert_close(outputs, model.predict(x))
    (tmp_path / "weights.bin").write_bytes(model.flat_params.tobytes()[:-4])  # one value short
    with pytest.raises(RuntimeError, match="weights.bin must hold exactly 756 values"):
        infer_on_device(project, x)


# What single-precision C must never call on the M4: the software double routines of libgcc and
# the double math functions (sqrt: batchnorm's old 1/sqrt((double)var + eps) on every call).
DOUBLE_ROUTINE = re.compile(r"__aeabi_d\w+|__aeabi_\w+2d|sqrt|exp|log|tanh|pow|__ieee754_\w+")


@pytest.mark.parametrize("weights", ["compiled", "read"])
@pytest.mark.parametrize("spec", ["lenet5", "ds_cnn"])
def test_inference_builds_call_no_double_routine(spec, weights, tmp_path, build_dir):
    """An inference build computes in single precision: arm-none-eabi-nm finds no __aeabi_d*
    routine nor a double math function in the ELF, with batchnorm folded at emit time (weights
    compiled in) or computed from weights read at run time, and the outputs still match."""
    need_toolchain()
    board = board_named(BOARD)
    path = ROOT / f"specs/{spec}.yaml"
    model = cnncc.compile(path, build_dir=build_dir).init(5)
    rng = np.random.default_rng(6)
    for key, view in model.params.items():  # running statistics that are not the identity
        if key.endswith("running_mean"):
            view[...] = rng.normal(0, 0.2, view.shape)
        elif key.endswith("running_var"):
            view[...] = rng.uniform(0.5, 2.0, view.shape)
    model.save(tmp_path / "weights.npz")
    compiled = tmp_path / "weights.npz" if weights == "compiled" else None
    project = emit_board(path, tmp_path / "project", BOARD, compiled, inference_only=True)
    elf = build(project.directory, board)
    nm = subprocess.run([need_command(board.nm_tool.command, board.nm_tool.install), "--defined-only", str(elf)],
                        capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in nm.splitlines() if line.strip()]
    assert "main" in names and f"{project.program.name}_forward" in names  # nm read the whole program
    assert [n for n in names if DOUBLE_ROUTINE.fullmatch(n)] == []
    x = rng.standard_normal((2, *model.input_shape)).astype(np.float32)
    outputs, _ = infer_on_device(project, x, params=None if compiled else model.flat_params)
    assert_close(outputs, model.predict(x))


PLAIN_SGD = {**ADAM_NET, "name": "plain_sgd", "optimizer": {"type": "sgd", "lr": 0.05}}  # no optimizer state


@pytest.mark.parametrize("spec", [ROOT / "specs/signal1d.yaml", ADAM_NET, PLAIN_SGD],
                         ids=["signal1d_sgd", "tiny_adam_mse", "plain_sgd_mse"])
def test_training_on_the_m4(spec, tmp_path, build_dir):
    """A few steps inside QEMU: the loss falls, and the losses and weights equal the host's."""
    need_toolchain()
    batch, steps = 4, 6
    model = cnncc.compile(spec, build_dir=build_dir).init(5)
    start = model.flat_params.copy()
    project = emit_board(spec, tmp_path, BOARD, batch=batch)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    if model.program.loss.takes_labels:
        y = rng.integers(0, model.program.output.size, batch).astype(np.int32)
    else:
        y = rng.standard_normal((batch, *model.output_shape)).astype(np.float32)
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)  # the same batch each step
    elf = build(project.directory, project.board)
    symbols = symbol_sizes(elf, project.board)
    elements = model.program.buffer_elements(batch, training=True)
    assert {name: symbols.get(name, 0) for name in elements} == {k: n * 4 for k, n in elements.items()}
    trained, result = train_on_device(project, xs, ys, params=start)
    host = [model.train_step(x, y) for _ in range(steps)]
    assert len(result.losses) == steps and result.losses[-1] < 0.8 * result.losses[0]
    np.testing.assert_allclose(result.losses, host, rtol=RTOL)
    assert_params_close(model.program, trained, model.flat_params)
    assert not np.allclose(trained, start)


def test_cli_build_prints_measured_next_to_predicted(tmp_path, capsys):
    need_toolchain()
    status = main(["emit", str(ROOT / "specs/signal1d.yaml"), "--board", BOARD, "--inference-only", "--build",
                   "-o", str(tmp_path)])
    out = capsys.readouterr().out
    arena = deployment_figures(cnncc.check(ROOT / "specs/signal1d.yaml").program, 1)["arena_bytes"]
    assert status == 0 and (tmp_path / "main.elf").is_file()
    line = next(line for line in out.splitlines() if line.strip().startswith("arena"))
    assert line.split()[1] == f"{arena:,}" and f"predicted {arena:,}" in line


def test_fine_tuning_lenet_on_the_m4_within_the_predicted_ram(tmp_path, build_dir):
    """LeNet with all but its last two layers frozen trains on the device; the training buffers of
    the ELF are exactly `cnncc check --batch 1`'s training memory, and the result is the host's."""
    need_toolchain()
    import yaml

    spec = yaml.safe_load((ROOT / "specs/lenet5.yaml").read_text())
    for layer in spec["layers"][:-2]:
        layer["trainable"] = False
    model = cnncc.compile(spec, build_dir=build_dir).init(7)
    start = model.flat_params.copy()
    project = emit_board(spec, tmp_path, BOARD, batch=1)
    elf = build(project.directory, project.board)
    program = cnncc.check(spec, batch=1).program
    symbols = symbol_sizes(elf, project.board)
    assert sum(symbols[name] for name in program.buffer_elements(1, training=True)) \
        == program.buffer_bytes(1, training=True) == json.loads(cnncc.check(spec, batch=1).to_json())["totals"]["training_bytes"]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = np.array([3], np.int32)
    steps = 3
    trained, result = train_on_device(project, np.concatenate([x] * steps), np.concatenate([y] * steps), params=start)
    host = [model.train_step(x, y) for _ in range(steps)]
    np.testing.assert_allclose(result.losses, host, rtol=RTOL)
    assert result.losses[-1] < result.losses[0]
    assert_params_close(model.program, trained, model.flat_params)
    frozen = model.program.num_trainable
    np.testing.assert_array_equal(trained[frozen:], start[frozen:])  # the frozen layers never move


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_training_build_compiles_warning_free(spec, tmp_path):
    """The training build (batch 1) of every spec that fits the board's RAM, built by the project's
    own Makefile (-Wall -Wextra -Werror) with no warning at all; the others are refused before
    anything is written. mnist_autoencoder's once failed: arm-none-eabi-gcc -O2 saw a negative lane
    count in a vector store of gemm_nn_block (-Wstringop-overflow) on a path that never runs."""
    board = board_named(BOARD)
    need_command(board.compiler.command, board.compiler.install)
    need_command("make", "apt-get install -y make")
    try:
        project = emit_board(spec, tmp_path / "project", BOARD, batch=1)
    except ValueError as exc:
        assert spec.stem in ("resnet8", "vgg_cifar") and "does not fit the mps2-an386's RAM" in str(exc)
        assert not (tmp_path / "project").exists()
        return
    result = subprocess.run(["make", "-C", str(project.directory), "main.elf"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    assert "-Werror" in (project.directory / "Makefile").read_text()


def test_the_autoencoder_trains_on_the_m4(tmp_path, build_dir):
    """mnist_autoencoder (a transposed conv whose input gradient is gemm_nn's narrow last column
    block: the build that failed) trains on the device exactly as on the host."""
    need_toolchain()
    spec = ROOT / "specs/mnist_autoencoder.yaml"
    model = cnncc.compile(spec, build_dir=build_dir).init(9)
    start = model.flat_params.copy()
    project = emit_board(spec, tmp_path, BOARD, batch=1)
    build(project.directory, project.board)
    x = np.random.default_rng(10).uniform(0, 1, (3, *model.input_shape)).astype(np.float32)
    trained, result = train_on_device(project, x, x, params=start)  # targets: the input itself
    host = [model.train_step(x[i:i + 1], x[i:i + 1]) for i in range(len(x))]
    np.testing.assert_allclose(result.losses, host, rtol=RTOL)
    assert_params_close(model.program, trained, model.flat_params)
    assert not np.allclose(trained, start)

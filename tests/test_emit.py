"""`cnncc emit`: standalone C, built with plain `make` (no cffi), against the Python module.

Every spec in specs/ is emitted twice (full, and --inference-only with its static arena)
with the weights of a seeded Model, built with `-std=c99 -Wall -Wextra -Wpedantic -Werror`
and run on raw inputs: the outputs must match `Model.predict`. Also: -O0 builds, clang when
installed, bit-exact weights, two models in one program, a C-only training run, the arena
measured under valgrind and AddressSanitizer, and the memory plan's invariants.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnncc
from cnncc import cli
from cnncc.check import check_net
from cnncc.checkpoint import CheckpointError
from cnncc.emit import c_hex_float, emit
from cnncc.lowering import lower
from cnncc.memplan import Lifetime, deployment_figures, first_fit, lifetimes, plan
from cnncc.pipeline import analyse, emit_options
from cnncc.spec import load_spec
from tools import need_command

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("specs/*.yaml"))
MODES = ("full", "inference")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
# A float32 inference build computes in single precision: not one implicit float/double
# conversion (test_inference_builds_have_no_double_arithmetic). The fixture builds every
# inference emit with these, so that test reads the fixture's builds instead of repeating them.
SINGLE_PRECISION = ["-Wdouble-promotion", "-Wfloat-conversion"]
CC = os.environ.get("CC") or "gcc"
SAMPLES = 3
WORKERS = max(2, os.cpu_count() or 2)

pytestmark = pytest.mark.skipif(not (shutil.which(CC) and shutil.which("make")), reason="needs a C compiler and make")


def _run(command, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, **kwargs)
    shown = " ".join(map(str, command))
    assert result.returncode == 0, f"{shown} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def make(directory: Path, cflags, cc: str = CC) -> None:
    _run(["make", "-s", "-C", directory, f"CC={cc}", "CFLAGS=" + " ".join(cflags)])


def fresh_copy(source: Path, target: Path) -> Path:
    """The emitted sources only (no objects), to build again with other flags."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix in (".c", ".h") or path.name == "Makefile":
            shutil.copy(path, target / path.name)
    return target


def parse_output(stdout: str, out_size: int, dtype=np.float32) -> tuple[np.ndarray, list[int]]:
    """Per sample: a line of outputs (%.9g round-trips a float32, %.17g a float64), `class: K`."""
    lines = stdout.strip().splitlines()
    values = [np.array(line.split(), dtype=np.float64) for line in lines[0::2]]
    classes = [int(line.removeprefix("class: ")) for line in lines[1::2]]
    assert all(len(v) == out_size for v in values) and all(line.startswith("class: ") for line in lines[1::2])
    return np.array(values, dtype=dtype), classes


@dataclass
class Case:
    name: str
    spec: Path
    model: object
    weights: Path
    inputs: Path
    x: np.ndarray
    expected: np.ndarray
    dirs: dict


# The emitted programs are built by `make` without -march, the Python module with -march=native:
# another vector width (and FMA or not) sums in another order, so float32 outputs agree to the
# network's float32 rounding (scaled by the largest output), not bit for bit.
FLOAT32_RTOL = 1e-5


def check_outputs(case: Case, directory: Path, runner=(), rtol=FLOAT32_RTOL) -> subprocess.CompletedProcess:
    result = _run([*runner, directory / "main", case.inputs])
    expected = case.expected.reshape(len(case.expected), -1)
    got, classes = parse_output(result.stdout, expected.shape[1], expected.dtype)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                               err_msg=f"{case.name}: {directory}")
    assert classes == list(expected.argmax(axis=1))
    return result


@pytest.fixture(scope="module")
def cases(tmp_path_factory, build_dir, once_per_session) -> dict[str, Case]:
    """Every spec: a seeded model, its weights, inputs and predictions; emitted both ways and built
    (once in the session: the builds are in a directory every worker reads)."""

    def seeded(spec: Path):
        model = cnncc.compile(spec, build_dir=build_dir).init(seed=3)
        rng = np.random.default_rng(7)
        for key, view in model.params.items():  # batchnorm statistics that are not the identity
            if key.endswith("running_mean"):
                view[...] = rng.normal(0, 0.2, view.shape)
            elif key.endswith("running_var"):
                view[...] = rng.uniform(0.5, 2.0, view.shape)
        x = rng.standard_normal((SAMPLES, *model.input_shape)).astype(np.float32)
        return model, x

    def build_all() -> dict[str, dict]:
        root = tmp_path_factory.mktemp("emit")

        def build(spec: Path) -> dict:
            name = spec.stem
            model, x = seeded(spec)
            weights, inputs = root / f"{name}.npz", root / f"{name}.bin"
            model.save(weights)
            x.tofile(inputs)
            dirs = {}
            for mode in MODES:
                dirs[mode] = emit(spec, root / name / mode, weights, inference_only=mode == "inference").directory
                make(dirs[mode], STRICT + ["-O2"] + (SINGLE_PRECISION if mode == "inference" else []))
            return {"weights": str(weights), "inputs": str(inputs), "dirs": {m: str(d) for m, d in dirs.items()}}

        with ThreadPoolExecutor(WORKERS) as pool:
            return dict(zip((spec.stem for spec in SPECS), pool.map(build, SPECS)))

    built = once_per_session("emit-builds", build_all)
    found = {}
    for spec in SPECS:  # the same seeded model in every worker (its module is in the build cache)
        model, x = seeded(spec)
        paths = built[spec.stem]
        found[spec.stem] = Case(spec.stem, spec, model, Path(paths["weights"]), Path(paths["inputs"]), x,
                                model.predict(x), {mode: Path(d) for mode, d in paths["dirs"].items()})
    return found


# ---- the emitted programs against the Python module ------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", [p.stem for p in SPECS])
def test_main_matches_python(cases, spec, mode):
    case = cases[spec]
    check_outputs(case, case.dirs[mode])
    # stdin works as well as a file argument
    with open(case.inputs, "rb") as handle:
        result = subprocess.run([case.dirs[mode] / "main"], stdin=handle, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == _run([case.dirs[mode] / "main", case.inputs]).stdout


# The level each compiler builds each mode at besides the fixture's gcc -O2: every mode at -O0
# once (code that compiles only when the optimiser inlines, such as an intrinsic's immediate
# passed through a function, or C99 `inline` without an external definition, fails there) and
# under clang once. The training code's -O0 build is clang's, not gcc's: at -O0 the training C takes
# gcc longest of all its builds (ResNet-8: 7.2 s, against 5.0 s at -O2 and 2.4 s for clang -O0).
LEVELS = {"gcc": {"inference": "-O0"}, "clang": {"full": "-O0", "inference": "-O2"}}


@pytest.mark.slow
def test_no_reliance_on_optimisation(cases, tmp_path):
    """-O0 builds, warning-free, give the same answers (the training code's: test_clang)."""
    jobs = [(case, fresh_copy(case.dirs[mode], tmp_path / case.name / mode), level)
            for case in cases.values() for mode, level in LEVELS["gcc"].items()]

    def build_and_check(job):
        case, directory, level = job
        make(directory, STRICT + [level])
        check_outputs(case, directory)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(build_and_check, jobs))


@pytest.mark.slow
def test_clang(cases, tmp_path):
    need_command("clang", "apt-get install -y clang")  # a failure, not a skip, in CI (.ci/run)
    levels = LEVELS["clang"]
    jobs = [(case, fresh_copy(case.dirs[mode], tmp_path / f"{case.name}-{mode}-{levels[mode]}"), levels[mode])
            for case in cases.values() for mode in MODES]

    def build_and_check(job):
        case, directory, level = job
        make(directory, STRICT + [level], cc="clang")
        check_outputs(case, directory)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(build_and_check, jobs))


def test_inference_builds_have_no_double_arithmetic(cases, tmp_path):
    """A float32 inference build computes in single precision and has no training code: with the
    weights compiled in (batchnorm folded at emit time) or read at run time, every file compiles
    without one implicit float/double conversion, and its outputs still match Model.predict."""
    jobs = [(case, compiled) for case in cases.values() for compiled in (True, False)]
    assert {np.dtype(c.model.dtype) for c in cases.values()} == {np.dtype(np.float32)}

    def build_and_check(job):
        case, compiled = job
        if compiled:  # the fixture built it with SINGLE_PRECISION's warnings as errors
            directory = case.dirs["inference"]
        else:
            directory = emit(case.spec, tmp_path / f"{case.name}-read", inference_only=True).directory
        source = (directory / f"{case.name}.c").read_text()
        assert "training" not in source and "random53" not in source, case.name
        if compiled:  # batchnorm reads its folded scale and shift: no statistics left to normalise
            assert "REAL_SQRT(running_var" not in source and "EPS" not in source, case.name
            check_outputs(case, directory)
            return
        make(directory, STRICT + ["-O2"] + SINGLE_PRECISION)
        flat = np.concatenate([case.model.params[p.key].ravel() for p in case.model.program.params])
        flat.tofile(directory / "w.bin")
        expected = case.expected.reshape(len(case.expected), -1)
        got, _ = parse_output(_run([directory / "main", directory / "w.bin", case.inputs]).stdout, expected.shape[1])
        np.testing.assert_allclose(got, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_RTOL * np.abs(expected).max(),
                                   err_msg=case.name)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(build_and_check, jobs))


def test_weights_are_bit_exact(cases, tmp_path):
    """The literals parse back to the saved float32 bits, in Python and through a C program."""
    dump = tmp_path / "dump.c"
    for case in cases.values():
        saved = np.concatenate([case.model.params[p.key].ravel() for p in case.model.program.params])
        directory = case.dirs["full"]
        text = (directory / f"{case.name}_weights.c").read_text()
        literals = re.findall(r"(-?0x[0-9a-f.]+p[+-]\d+)f", text)
        parsed = np.array([float.fromhex(v) for v in literals], dtype=np.float32)
        assert parsed.view(np.uint32).tolist() == saved.view(np.uint32).tolist()
        dump.write_text(f'#include <stdio.h>\n#include "{case.name}.h"\n'
                        f"int main(void)\n{{\n    fwrite({case.name}_weights, sizeof(float), "
                        f"{case.name.upper()}_NUM_PARAMS, stdout);\n    return 0;\n}}\n")
        program = tmp_path / f"dump_{case.name}"
        _run([CC, *STRICT, "-I", directory, "-o", program, dump, directory / f"{case.name}_weights.o"])
        raw = subprocess.run([program], capture_output=True, check=True).stdout
        assert raw == saved.astype("<f4").tobytes()


def test_c_hex_float():
    values = np.array([0.0, -0.0, 1.0, -2.5, 0.1, 3.4028235e38, 1e-45, 1.17549435e-38, -7.006e-44], np.float32)
    for v in values.tolist():
        text = c_hex_float(v, "float32")
        assert text.endswith("f") and np.float32(float.fromhex(text[:-1])).tobytes() == np.float32(v).tobytes()
    assert c_hex_float(0.1, "float64") == "0x1.999999999999ap-4" and c_hex_float(2.0, "float64") == "0x1p+1"
    for bad in (float("nan"), float("inf"), True, "1.0", 0.1):
        with pytest.raises(ValueError):
            c_hex_float(bad, "float32")  # 0.1 is not a float32 value


# ---- the model files: no allocation, no stdio, prefixed symbols ----------------------------

def test_model_files_use_no_heap_and_no_stdio(cases):
    banned = re.compile(r"\b(malloc|calloc|realloc|free|printf|fprintf|puts|fopen|FILE|stdio\.h|stdlib\.h|exit)\b")
    for case in cases.values():
        for mode in MODES:
            for suffix in (".c", ".h", "_weights.c"):
                text = (case.dirs[mode] / f"{case.name}{suffix}").read_text()
                assert not banned.search(text), f"{case.name}{suffix} ({mode}): {banned.search(text)}"
        main = (case.dirs["inference"] / "main.c").read_text()
        assert not re.search(r"\b(malloc|calloc|realloc|free)\b", main)


def test_every_symbol_is_prefixed(cases):
    for case in cases.values():
        for mode in MODES:
            directory = case.dirs[mode]
            objects = [directory / f"{case.name}.o", directory / f"{case.name}_weights.o"]
            symbols = _run(["nm", "-g", "--defined-only", "-P", *objects]).stdout.split("\n")
            names = [line.split()[0] for line in symbols if line and not line.endswith(":")]
            assert names and all(n.startswith(f"{case.name}_") for n in names), names


def test_inference_api_is_forward_only(cases):
    header = (cases["resnet_small"].dirs["inference"] / "resnet_small.h").read_text()
    assert "const float *params;" in header and "float *arena;" in header
    for absent in ("_backward", "_loss", "_step", "grads", "_hyper"):
        assert absent not in header
    source = (cases["resnet_small"].dirs["inference"] / "resnet_small.c").read_text()
    assert "_backward" not in source and "loss_" not in source
    full = (cases["resnet_small"].dirs["full"] / "resnet_small.h").read_text()
    assert "resnet_small_train_step" in full and "extern const float resnet_small_weights[" in full


def test_two_models_link_into_one_program(cases, tmp_path):
    lenet, seed = cases["lenet5"], cases["mnist_seed"]
    full, inference = lenet.dirs["full"], seed.dirs["inference"]
    lenet.x[:1].tofile(tmp_path / "a.bin")
    seed.x[:1].tofile(tmp_path / "b.bin")
    program = tmp_path / "both.c"
    program.write_text("""\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lenet5.h"
#include "mnist_seed.h"

static float seed_arena[MNIST_SEED_ARENA_SIZE];
static float lenet_input[LENET5_INPUT_SIZE], seed_input[MNIST_SEED_INPUT_SIZE];

static int read_floats(const char *path, float *dst, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    const size_t got = fread(dst, sizeof(float), n, f);
    fclose(f);
    return got == n;
}

static void print_row(const float *y, int n)
{
    for (int i = 0; i < n; i++)
        printf("%s%.9g", i ? " " : "", (double)y[i]);
    printf("\\n");
}

int main(int argc, char **argv)
{
    if (argc != 3 || !read_floats(argv[1], lenet_input, LENET5_INPUT_SIZE)
        || !read_floats(argv[2], seed_input, MNIST_SEED_INPUT_SIZE))
        return 1;
    float *params = malloc(sizeof(float) * LENET5_NUM_PARAMS);
    float *acts = malloc(sizeof(float) * lenet5_activations_size(1));
    float workspace[LENET5_WORKSPACE_SIZE + 1];
    if (!params || !acts)
        return 1;
    memcpy(params, lenet5_weights, sizeof(float) * LENET5_NUM_PARAMS);
    const lenet5_context lenet = {.params = params, .activations = acts, .workspace = workspace};
    const mnist_seed_context seed = {.params = mnist_seed_weights, .arena = seed_arena};
    lenet5_forward(&lenet, lenet_input, 1, 0, 0);
    mnist_seed_forward(&seed, seed_input);
    print_row(lenet5_output(&lenet, 1), LENET5_OUTPUT_SIZE);
    print_row(mnist_seed_output(&seed), MNIST_SEED_OUTPUT_SIZE);
    free(acts);
    free(params);
    return 0;
}
""")
    binary = tmp_path / "both"
    _run([CC, *STRICT, "-O2", "-I", full, "-I", inference, "-o", binary, program,
          full / "lenet5.o", full / "lenet5_weights.o", inference / "mnist_seed.o", inference / "mnist_seed_weights.o",
          "-lm"])
    lines = _run([binary, tmp_path / "a.bin", tmp_path / "b.bin"]).stdout.splitlines()
    np.testing.assert_allclose(np.array(lines[0].split(), np.float32), lenet.expected[0], rtol=FLOAT32_RTOL,
                               atol=FLOAT32_RTOL * np.abs(lenet.expected[0]).max())
    np.testing.assert_allclose(np.array(lines[1].split(), np.float32), seed.expected[0], rtol=FLOAT32_RTOL,
                               atol=FLOAT32_RTOL * np.abs(seed.expected[0]).max())


TINY = """\
name: tiny
input: {channels: 1, height: 6, width: 6}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, activation: relu}
  - {type: flatten}
  - {name: out, type: dense, units: 2}
loss: softmax_cross_entropy
optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
"""

TRAIN_C = """\
#include <stdio.h>
#include "tiny.h"

enum { BATCH = 8, STEPS = 400, WINDOW = 20 };

static float params[TINY_NUM_PARAMS], grads[TINY_NUM_PARAMS], state[TINY_OPTIMIZER_STATE_SIZE + 1];
static float acts[TINY_ACTIVATIONS_PER_SAMPLE * BATCH], grad_acts[TINY_ACTIVATIONS_PER_SAMPLE * BATCH];
static float workspace[TINY_WORKSPACE_SIZE + 1];
static float x[BATCH * TINY_INPUT_SIZE];
static int32_t labels[BATCH];
static uint64_t rng = 88172645463325252ULL;

static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

/* Class 0: the left half is bright; class 1: the right half. Plus noise. */
static void next_batch(void)
{
    for (int b = 0; b < BATCH; b++) {
        labels[b] = uniform() < 0.5;
        for (int i = 0; i < TINY_INPUT_SIZE; i++)
            x[b * TINY_INPUT_SIZE + i] = (float)(0.5 * ((i % 6 < 3) == (labels[b] == 0)) + 2.0 * (uniform() - 0.5));
    }
}

int main(void)
{
    for (int i = 0; i < TINY_NUM_PARAMS; i++)
        params[i] = (float)(0.6 * (uniform() - 0.5));
    const tiny_context ctx = {.params = params, .grads = grads, .optimizer_state = state,
                              .activations = acts, .grad_activations = grad_acts, .workspace = workspace};
    tiny_hyper hyper = {.lr = 0.01, .momentum = 0.9, .nesterov = 0, .weight_decay = 0, .step = 0};
    double first = 0, last = 0;
    for (int step = 1; step <= STEPS; step++) {
        next_batch();
        hyper.step = step;
        double loss;
        if (!tiny_train_step(&ctx, x, labels, BATCH, &hyper, (uint64_t)step, &loss))
            return 1;
        if (step <= WINDOW)
            first += loss / WINDOW;
        if (step > STEPS - WINDOW)
            last += loss / WINDOW;
    }
    printf("%.9g %.9g\\n", first, last);
    return 0;
}
"""


def test_c_program_trains_on_its_own(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    directory = emit(spec, tmp_path / "tiny").directory
    (tmp_path / "train.c").write_text(TRAIN_C)
    binary = tmp_path / "train"
    _run([CC, *STRICT, "-O2", "-I", directory, "-o", binary, tmp_path / "train.c", directory / "tiny.c", "-lm"])
    first, last = map(float, _run([binary]).stdout.split())
    assert 0.3 < first < 1.0 and last < 0.25 * first, (first, last)  # about 0.58 -> 0.05


def test_float64_models(tmp_path, build_dir):
    """A float64 spec: double literals and buffers, and main reads and prints doubles."""
    spec = load_spec(TINY.replace("name: tiny\n", "name: tiny64\ndtype: float64\n"))
    model = cnncc.compile(spec, build_dir=build_dir).init(seed=5)
    model.save(tmp_path / "w.npz")
    x = np.random.default_rng(2).standard_normal((SAMPLES, *model.input_shape))
    x.tofile(tmp_path / "x.bin")
    for mode in MODES:
        directory = emit(spec, tmp_path / mode, tmp_path / "w.npz", inference_only=mode == "inference").directory
        assert "const double tiny64_weights[TINY64_NUM_PARAMS]" in (directory / "tiny64_weights.c").read_text()
        make(directory, STRICT + ["-O2"])
        case = Case("tiny64", Path("<string>"), model, tmp_path / "w.npz", tmp_path / "x.bin", x, model.predict(x), {})
        check_outputs(case, directory, rtol=1e-12)


# ---- the inference arena, measured ------------------------------------------------------

TRIVIAL_STDIO_C = """\
#include <stdio.h>
int main(int argc, char **argv)
{
    float v[4];
    FILE *f = argc > 1 ? fopen(argv[1], "rb") : NULL;
    if (!f)
        return 1;
    const size_t n = fread(v, sizeof v[0], 4, f);
    fclose(f);
    printf("%zu %.9g\\nclass: 0\\n", n, (double)v[0]);
    return 0;
}
"""


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_inference_arena_under_valgrind(cases, tmp_path):
    """No memory errors, and no heap use beyond what the same stdio costs a trivial program."""
    valgrind = ["valgrind", "--error-exitcode=99", "--leak-check=full"]
    usage = re.compile(r"total heap usage: ([\d,]+) allocs, ([\d,]+) frees, ([\d,]+) bytes allocated")
    trivial = tmp_path / "trivial"
    (tmp_path / "trivial.c").write_text(TRIVIAL_STDIO_C)
    _run([CC, *STRICT, "-O2", "-o", trivial, tmp_path / "trivial.c"])
    cheap = [cases[name] for name in ("resnet_small", "lenet5", "signal1d")]

    def measure(case):
        if case is None:
            return usage.search(_run([*valgrind, trivial, cases["lenet5"].inputs]).stderr).groups()
        result = check_outputs(case, case.dirs["inference"], runner=valgrind)
        assert "ERROR SUMMARY: 0 errors" in result.stderr
        return usage.search(result.stderr).groups()

    with ThreadPoolExecutor(WORKERS) as pool:
        baseline, *measured = pool.map(measure, [None, *cheap])
    assert all(m == baseline for m in measured), (baseline, measured)


def test_arena_under_address_sanitizer(cases, tmp_path):
    """Out-of-bounds access of the static arena or any buffer, or undefined behaviour, aborts."""
    flags = STRICT + ["-O1", "-g1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                      "-fno-omit-frame-pointer"]
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    if subprocess.run([CC, *flags, "-o", tmp_path / "probe", probe], capture_output=True).returncode:
        pytest.skip(f"{CC} cannot build with -fsanitize=address,undefined here")
    jobs = [(case, fresh_copy(case.dirs["inference"], tmp_path / case.name)) for case in cases.values()]

    def build_and_check(job):
        case, directory = job
        make(directory, flags)
        result = check_outputs(case, directory)
        assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(build_and_check, jobs))


def test_the_arena_is_exactly_what_the_model_touches(cases, tmp_path):
    """One element less and AddressSanitizer reports an overflow of the static arena: the
    computed size is the measured peak (the activations, then the conv kernels' shared scratch)."""
    case = cases["lenet5"]
    directory = fresh_copy(case.dirs["inference"], tmp_path / "short")
    header = directory / "lenet5.h"
    size = re.search(r"#define LENET5_ARENA_SIZE (\d+)", header.read_text()).group(1)
    header.write_text(header.read_text().replace(f"LENET5_ARENA_SIZE {size}", f"LENET5_ARENA_SIZE {int(size) - 1}"))
    try:
        make(directory, STRICT + ["-O1", "-g", "-fsanitize=address"])
    except AssertionError:
        pytest.skip(f"{CC} cannot build with -fsanitize=address here")
    result = subprocess.run([directory / "main", case.inputs], capture_output=True, text=True)
    assert result.returncode != 0 and "global-buffer-overflow" in result.stderr


# ---- the memory plan ---------------------------------------------------------------------

def _programs():
    return {p.stem: lower(check_net(load_spec(p))) for p in SPECS}


def _assert_valid(spans, offsets):
    for i, a in enumerate(spans):
        assert offsets[a.name] >= 0
        for b in spans[i + 1:]:
            if a.overlaps(b):
                assert (offsets[a.name] + a.size <= offsets[b.name]
                        or offsets[b.name] + b.size <= offsets[a.name]), (a, b, offsets)


def test_plan_never_overlaps_live_tensors():
    for name, program in _programs().items():
        memory = plan(program)
        _assert_valid(memory.lifetimes, memory.offsets)
        assert memory.activations_per_sample == max(memory.offsets[t.name] + t.size for t in memory.lifetimes)
        assert memory.activations_per_sample <= program.activation_size, name


def test_lifetimes_follow_views_and_keep_the_output():
    program = _programs()["lenet5"]
    spans = {t.name: t for t in lifetimes(program)}
    index = {op.name: i for i, op in enumerate(program.ops)}
    assert spans["pool2"].last == index["fc3"]  # read through the flatten view
    assert spans["fc5"].last == len(program.ops) - 1
    # conv1's relu is its op's epilogue: one tensor, read by the pool
    assert spans["conv1"].first == index["conv1"] and spans["conv1"].last == index["pool1"]
    resnet = _programs()["resnet_small"]
    spans = {t.name: t for t in lifetimes(resnet)}
    index = {op.name: i for i, op in enumerate(resnet.ops)}
    down, stem = resnet.layer_outputs["down"].name, resnet.layer_outputs["stem_relu"].name
    assert spans[down].last == index["merged"]  # skip connections stay live
    # block1_add runs in the kernels of the batchnorm before it (its residual epilogue)
    assert spans[stem].last == index[resnet.layer_outputs["block1_add"].name]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 12), st.integers(0, 6)), min_size=1, max_size=25))
def test_first_fit_property(raw):
    spans = tuple(Lifetime(f"t{i}", size, first, first + length) for i, (size, first, length) in enumerate(raw))
    offsets = first_fit(spans)
    _assert_valid(spans, offsets)
    total = max(offsets[t.name] + t.size for t in spans)
    peak = max(sum(t.size for t in spans if t.first <= step <= t.last) for step in range(20))
    assert peak <= total <= sum(t.size for t in spans)
    assert first_fit(spans) == offsets  # deterministic


def test_arena_saving_and_the_reported_figures(cases, capsys):
    program = _programs()["lenet5"]
    memory = plan(program)
    saving = 1 - memory.activations_per_sample / memory.unshared_per_sample  # the scratch is the same in both
    with capsys.disabled():
        print(f"\nlenet5 inference arena: {memory.arena_size(1) * 4:,} bytes against "
              f"{memory.unshared_size(1) * 4:,} with one buffer per tensor ({saving:.0%} of the activations saved)")
    assert memory.arena_size(1) < memory.unshared_size(1) and saving > 0.2
    # the ops share one scratch region: the largest forward scratch, here conv1's wide output
    assert memory.workspace == max(op.forward_scratch for op in program.ops) > 0
    for case in cases.values():
        assert cli.main(["check", str(case.spec), "--format", "json"]) == 0
        totals = json.loads(capsys.readouterr().out)["totals"]
        figures = deployment_figures(analyse(case.spec, emit_options("vector")).program, 1)  # what emit writes
        assert {k: totals[k] for k in figures} == figures
        header = (case.dirs["inference"] / f"{case.name}.h").read_text()
        arena = int(re.search(rf"#define {case.name.upper()}_ARENA_SIZE (\d+)", header).group(1))
        assert arena * 4 == figures["arena_bytes"] and figures["weight_bytes"] == case.model.program.num_params * 4
    assert cli.main(["check", str(ROOT / "specs/lenet5.yaml")]) == 0
    # activations 7,840 floats planned (10,054 one buffer per tensor) + conv1's 8 x 892 wide output
    assert "arena 59,904 bytes (RAM) against 68,760" in capsys.readouterr().out


# ---- the command line --------------------------------------------------------------------

def test_cli_emit_with_a_batch(cases, tmp_path, capsys):
    case = cases["signal1d"]
    out = tmp_path / "out"
    assert cli.main(["emit", str(case.spec), "-o", str(out), "--weights", str(case.weights),
                     "--inference-only", "--batch", "3"]) == 0
    assert "weights 3,024 bytes" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"signal1d.h", "signal1d.c", "signal1d_weights.c", "main.c",
                                               "Makefile", "README.md"}
    readme = (out / "README.md").read_text()
    assert "cnncc " + cnncc.__version__ in readme and "signal1d.yaml" in readme and "arena at batch 3" in readme
    _run(["make", "-s", "-C", out])  # plain make: the Makefile's defaults (cc -O2, or $CC)
    check_outputs(case, out)  # three samples: one forward call
    assert cli.main(["check", str(case.spec), "--batch", "3", "--format", "json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    header = (out / "signal1d.h").read_text()
    assert f"#define SIGNAL1D_ARENA_SIZE {totals['arena_bytes'] // 4}" in header


def test_cli_emit_without_weights_reads_them_at_run_time(cases, tmp_path):
    case = cases["resnet_small"]
    out = tmp_path / "out"
    assert cli.main(["emit", str(case.spec), "-o", str(out)]) == 0
    assert not (out / "resnet_small_weights.c").exists()
    # the very sources the Python module compiled
    assert (out / "resnet_small.c").read_text() == case.model.module.sources.source
    assert (out / "resnet_small.h").read_text() == case.model.module.sources.header
    make(out, STRICT + ["-O2"])
    np.concatenate([case.model.params[p.key].ravel() for p in case.model.program.params]).tofile(tmp_path / "w.bin")
    got, _ = parse_output(_run([out / "main", tmp_path / "w.bin", case.inputs]).stdout, 10)
    np.testing.assert_allclose(got, case.expected, rtol=FLOAT32_RTOL, atol=FLOAT32_RTOL * np.abs(case.expected).max())


def test_emit_without_weights_removes_the_weights_an_earlier_emit_wrote(cases, tmp_path):
    case = cases["signal1d"]
    out = tmp_path / "out"
    assert cli.main(["emit", str(case.spec), "-o", str(out), "--weights", str(case.weights)]) == 0
    assert (out / "signal1d_weights.c").is_file()
    assert cli.main(["emit", str(case.spec), "-o", str(out)]) == 0
    assert not (out / "signal1d_weights.c").exists()
    (out / "signal1d_weights.c").write_text("/* mine */\n")  # not cnncc's: left alone
    assert cli.main(["emit", str(case.spec), "-o", str(out)]) == 0
    assert (out / "signal1d_weights.c").read_text() == "/* mine */\n"


def test_cli_emit_refuses_unvalidated_weights(cases, tmp_path, capsys):
    other = cases["lenet5"].weights
    assert cli.main(["emit", str(cases["signal1d"].spec), "-o", str(tmp_path / "a"), "--weights", str(other)]) == 1
    assert "differs from this model's spec" in capsys.readouterr().err
    bad = tmp_path / "nan.npz"
    model = cases["signal1d"].model
    saved = model.params["out.bias"].copy()
    try:
        model.params["out.bias"][0] = np.nan
        with pytest.raises(CheckpointError, match="NaN"):  # save refuses to write such a file
            model.save(bad)
    finally:
        model.params["out.bias"][...] = saved
    model.save(bad)
    arrays = dict(np.load(bad))  # so forge it
    arrays["out.bias"] = np.where(np.arange(arrays["out.bias"].size) == 0, np.nan, arrays["out.bias"])
    np.savez(bad, **arrays)
    assert cli.main(["emit", str(cases["signal1d"].spec), "-o", str(tmp_path / "b"), "--weights", str(bad)]) == 1
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_an_inference_build_gives_a_transposed_conv_its_scratch(build_dir, tmp_path):
    """conv_transpose2d's forward uses its workspace (the columns it scatters): the inference arena
    must hold it. Built under AddressSanitizer, an arena one element short would abort."""
    spec = {"name": "upconv", "input": {"channels": 3, "height": 5, "width": 6},
            "layers": [{"name": "up", "type": "conv_transpose2d", "filters": 4, "kernel": 3, "stride": 2},
                       {"type": "flatten"}, {"name": "out", "type": "dense", "units": 3}]}
    model = cnncc.compile(spec, build_dir=build_dir).init(seed=1)
    assert max(op.forward_scratch for op in model.program.ops) > 0
    weights = tmp_path / "w.npz"
    model.save(weights)
    x = np.random.default_rng(2).standard_normal((3, *model.input_shape)).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    directory = emit(spec, tmp_path / "out", weights, inference_only=True).directory
    make(directory, STRICT + ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
    case = Case("upconv", None, model, weights, tmp_path / "x.bin", x, model.predict(x), {})
    result = check_outputs(case, directory)
    assert "AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr

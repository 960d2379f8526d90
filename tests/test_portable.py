"""The portable backend (cnncc/backends/portable): strict ISO C99 kernels for any C compiler.

- every layer kind of tests/test_layers.py's table through backend="portable" against the NumPy
  reference, forward and backward in float64, the reference backward against finite differences
  of the portable C loss (the table's groups built with gcc -pedantic-errors -Werror at -O1);
- training on the portable backend follows the vector backend's loss trajectory (to float32
  rounding: the two sum in different orders);
- `cnncc emit --backend portable`, inference-only and full, built warning-free by
  gcc -std=c99 -pedantic-errors -Wall -Wextra -Werror, clang -std=c99 -Weverything -Werror with the
  exceptions the emitted Makefile lists (CLANG_WARNINGS_OFF, from the backend), and tcc; the gcc
  and tcc programs print Model.predict's outputs.
"""
from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cnncc
import test_layers as layers
from cnncc.backends.portable import CLANG_WARNINGS_OFF
from cnncc.emit import emit
from tools import need_command

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "portable"
STRICT_GCC = "-std=c99 -pedantic-errors -Wall -Wextra -Werror"
# the C compilers of the emitted files: name -> (CC, CFLAGS given to make; $(CLANG_WARNINGS_OFF) is
# the emitted Makefile's own variable), and how to install the ones CI may lack
COMPILERS = {
    "gcc": ("gcc", f"{STRICT_GCC} -O1"),
    "clang": ("clang", "-std=c99 -Weverything -Werror -O1 $(CLANG_WARNINGS_OFF)"),
    "tcc": ("tcc", "-std=c99 -Wall -Werror"),
}
INSTALL = {"gcc": "apt-get install gcc", "clang": "apt-get install clang", "tcc": "apt-get install tcc"}
EMIT_SPECS = ("lenet5", "signal1d", "resnet_small", "ds_cnn")  # the small ones of specs/: the tests stay fast
FAST_BUILD = ("-O1",)  # the Python models whose predictions the emitted programs must print
MODES = ("inference", "full")
SAMPLES = 3
# what the vector backend's C uses and strict ISO C99 has not (and OpenMP pragmas)
GNU_EXTENSIONS = re.compile(r"__attribute__|vector_size|__builtin|\(\{|typeof|_Pragma|#\s*pragma|__GNUC__")
RTOL = 1e-5  # float32 outputs of another sum order, relative to the largest output (as tests/test_emit.py)


# ---- every layer kind, against the NumPy reference ---------------------------------------

@pytest.fixture(scope="module")
def portable_groups(build_dir, compile_many):
    """Each shape group of the layer table, compiled on the portable backend and measured once."""
    cflags = (*STRICT_GCC.split()[1:], "-O1")  # the build adds -std=c99
    compile_many([layers.group_spec(cases, "float64", "pre", layers.group_name(shape, "float64", "pre"))
                  for shape, cases in layers.GROUPS.items()], cflags, backend=BACKEND)
    return {shape: layers.run_group(shape, "float64", "pre", build_dir, cflags=cflags, backend=BACKEND)
            for shape in layers.GROUPS}


@pytest.mark.parametrize("case", layers.CASES, ids=layers.CASE_IDS)
def test_layer_forward_and_backward(case, portable_groups):
    r = portable_groups[case.shape].cases[case.id]
    assert r.forward_infer <= layers.TOL_FORWARD64, f"inference forward: relative error {r.forward_infer:.3g}"
    assert r.forward_train <= layers.TOL_FORWARD64, f"training forward: relative error {r.forward_train:.3g}"
    assert r.running_stats <= layers.TOL_FORWARD64, f"running statistics: relative error {r.running_stats:.3g}"
    assert r.input_grads <= layers.TOL_BACKWARD64, f"input gradient: relative error {r.input_grads:.3g}"
    assert r.param_grads.keys() == r.fd_params.keys()
    for pname, err in r.param_grads.items():
        assert err <= layers.TOL_BACKWARD64, f"{pname} gradient: relative error {err:.3g}"
    for pname, err in r.fd_params.items():
        assert err <= layers.TOL_FD, f"{pname}: reference gradient vs finite differences {err:.3g}"


@pytest.mark.parametrize("shape", list(layers.GROUPS), ids=layers.shape_tag)
def test_input_gradient_matches_finite_differences(shape, portable_groups):
    err = portable_groups[shape].fd_input
    assert err <= layers.TOL_FD, f"dL/dx of the whole group: reference vs finite differences {err:.3g}"


def test_no_kernel_needs_vector_types(portable_groups):
    """The conv -> maxpool chains that the vector backend fuses (ir.PooledBackward) take the
    portable backend's own scalar template of that backward, and the source has none of the GNU
    extensions the vector backend uses."""
    from cnncc.backends.vector.conv2d import POOLED

    fused = {op.layer for g in portable_groups.values() for op in g.model.program.ops if op.pooled}
    assert fused == {"conv_relu_pool", "c1_relu_pool"}  # as on the vector backend (test_layers.py)
    for group in portable_groups.values():
        source = group.model.module.sources.source
        assert not GNU_EXTENSIONS.search(source)
        for op in group.model.program.ops:
            assert (op.plan.backward_template == POOLED) == (op.pooled is not None)
            if op.pooled is not None:
                assert f"{op.name}_backward" in source and "vec_load" not in source


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", list(layers.VARIANT_CASES), ids=layers.shape_tag)
def test_every_kernel_variant_and_block_form(shape, dtype, build_dir):
    """test_layers.py's kernel variants (every conv method, the pooled backward with and without a
    relu, strided, padded, dilated, overlapping windows, bias or none, odd channel counts whose
    kernel rows leave padding lanes) and the products' block forms and tails, on this backend.
    Its gradients must equal the NumPy reference's at every element; that the reference's
    gradients of these cases are right, test_layers.py checks against finite differences (four
    fifths of this test's time when it was done here again)."""
    cases = layers.VARIANT_CASES[shape]
    rng = np.random.default_rng(layers.stable_seed("portable variants", shape))
    cflags = (*STRICT_GCC.split()[1:], "-O2")
    result = layers.run_group(shape, dtype, "pre", build_dir, cases=cases, cflags=cflags, backend=BACKEND,
                              name=f"portable_variants_{layers.shape_tag(shape)}_{dtype}",
                              xs=layers.kink_safe(rng, (layers.VARIANT_BATCH,) + shape), fd=False)
    pooled = {op.layer for op in result.model.program.ops if op.pooled}
    assert pooled == {case.id for case in cases if case.id.startswith("pooled_")}
    tolerance = layers.TOL_FORWARD64 if dtype == "float64" else layers.TOL_FORWARD32
    for case in cases:
        r = result.cases[case.id]
        assert max(r.forward_infer, r.forward_train) <= tolerance, f"{case.id} forward: {r.forward_infer:.3g}"
        backward = layers.TOL_BACKWARD64 if dtype == "float64" else layers.TOL_BACKWARD32
        assert r.input_grads <= backward, f"{case.id} input gradient: {r.input_grads:.3g}"
        assert r.param_grads and max(r.param_grads.values()) <= backward, f"{case.id}: {r.param_grads}"


# ---- training: the vector backend's trajectory -------------------------------------------

TRAIN_SPEC = {
    "name": "portable_train", "input": {"channels": 2, "height": 10, "width": 10},
    "layers": [{"type": "conv2d", "filters": 6, "kernel": 3, "padding": "same", "activation": "relu"},
               {"type": "maxpool2d", "kernel": 2},
               {"type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "activation": "relu"},
               {"type": "batchnorm"}, {"type": "flatten"}, {"type": "dropout", "rate": 0.2},
               {"type": "dense", "units": 5}],
    "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.003},
}
TRAIN_STEPS = 12
TRAIN_RTOL = 1e-5


def test_training_follows_the_vector_backend(build_dir):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 2, 10, 10)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    losses = {}
    for backend in ("vector", BACKEND):
        model = cnncc.compile(TRAIN_SPEC, build_dir=build_dir, backend=backend).init(seed=2)
        assert model.program.backend == backend
        losses[backend] = np.array([model.train_step(x, y, seed=step) for step in range(TRAIN_STEPS)])
    assert losses["vector"][-1] < 0.8 * losses["vector"][0]  # it learns: the trajectory is not flat
    np.testing.assert_allclose(losses[BACKEND], losses["vector"], rtol=TRAIN_RTOL)


def test_unknown_backend_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"backend must be one of (vector, portable|portable, vector), got 'nope'"):
        cnncc.compile(TRAIN_SPEC, backend="nope")
    with pytest.raises(ValueError) as info:
        emit(TRAIN_SPEC, "/nonexistent/never-written", backend="nope")
    assert "portable" in str(info.value) and "vector" in str(info.value)


def test_threads_are_refused_rather_than_ignored():
    with pytest.raises(ValueError, match="the portable backend runs on one thread: threads must be 1, got 2"):
        cnncc.compile(TRAIN_SPEC, backend=BACKEND, threads=2)


# ---- emitted C: three compilers, no warnings, the Python module's outputs ------------------

@pytest.fixture(scope="module")
def emitted(tmp_path_factory, build_dir):
    """Each spec of EMIT_SPECS: a seeded model, its weights, inputs and predictions, and its portable
    emit in both modes, not built yet."""
    root = tmp_path_factory.mktemp("portable-emit")
    cases = {}
    for name in EMIT_SPECS:
        spec = ROOT / "specs" / f"{name}.yaml"
        model = cnncc.compile(spec, build_dir=build_dir, cflags=FAST_BUILD).init(seed=3)
        weights = root / f"{name}.npz"
        model.save(weights)
        x = np.random.default_rng(7).standard_normal((SAMPLES, *model.input_shape)).astype(np.float32)
        inputs = root / f"{name}.bin"
        x.tofile(inputs)
        dirs = {mode: emit(spec, root / name / mode, weights, inference_only=mode == "inference",
                           backend=BACKEND).directory for mode in MODES}
        cases[name] = (dirs, inputs, model.predict(x).reshape(SAMPLES, -1))
    return cases


def _build(directory: Path, compiler: str, target: Path) -> Path:
    """make in a copy of the emitted sources with one compiler: the program, or a failure showing
    the compiler's messages (a warning is an error: every command has -Werror)."""
    cc, cflags = COMPILERS[compiler]
    target.mkdir(parents=True)
    for path in directory.iterdir():
        if path.suffix in (".c", ".h") or path.name == "Makefile":
            (target / path.name).write_bytes(path.read_bytes())
    result = subprocess.run(["make", "-s", "-C", str(target), f"CC={cc}", f"CFLAGS={cflags}"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), f"{compiler} on {directory}:\n{result.stderr[-3000:]}"
    return target / "main"


@pytest.mark.parametrize("compiler", list(COMPILERS))
def test_emitted_c_compiles_without_warnings_and_predicts(compiler, emitted, tmp_path):
    need_command(COMPILERS[compiler][0], INSTALL[compiler])
    need_command("make", "apt-get install make")
    jobs = [(name, mode) for name in EMIT_SPECS for mode in MODES]

    def run(job):
        name, mode = job
        dirs, inputs, expected = emitted[name]
        program = _build(dirs[mode], compiler, tmp_path / name / mode)
        if compiler == "clang":  # built to prove it warning-free; gcc and tcc runs check the numbers
            return
        out = subprocess.run([str(program), str(inputs)], capture_output=True, text=True, check=True).stdout
        lines = out.strip().splitlines()
        got = np.array([[float(v) for v in line.split()] for line in lines[0::2]], dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(),
                                   err_msg=f"{name} {mode} built by {compiler}")
        assert [int(line.removeprefix("class: ")) for line in lines[1::2]] == list(expected.argmax(axis=1))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, jobs))


def test_the_makefile_documents_every_clang_exception(emitted):
    makefile = (emitted["lenet5"][0]["full"] / "Makefile").read_text()
    listed = re.search(r"^CLANG_WARNINGS_OFF =(.*)$", makefile, re.M).group(1).split()
    assert listed == list(CLANG_WARNINGS_OFF)
    for flag, reason in CLANG_WARNINGS_OFF.items():
        assert f"#   {flag}: {reason}" in makefile
    assert "CFLAGS ?= -std=c99 -O3" in makefile


def test_emitted_model_files_use_only_the_c99_headers(emitted):
    """The model files include only <math.h> <stddef.h> <stdint.h> <string.h> (and <omp.h> only
    where the compiler itself defines _OPENMP), and none of the GNU extensions."""
    allowed = {"math.h", "stddef.h", "stdint.h", "string.h"}
    for dirs, _, _ in emitted.values():
        for mode in MODES:
            for path in dirs[mode].glob("*.[ch]"):
                if path.name == "main.c":
                    continue
                text = path.read_text()
                included = set(re.findall(r'^#include <([^>]+)>', text, re.M))
                assert included <= allowed | {"omp.h"}, (path, included)
                if "omp.h" in included:
                    assert "#if defined(_OPENMP)\n#include <omp.h>\n#endif" in text
                assert not GNU_EXTENSIONS.search(text), path


def test_cli_emit_backend(tmp_path, capsys):
    from cnncc import cli

    spec = str(ROOT / "specs" / "signal1d.yaml")
    assert cli.main(["emit", spec, "-o", str(tmp_path / "p"), "--backend", BACKEND]) == 0
    assert "__attribute__" not in next((tmp_path / "p").glob("signal1d.c")).read_text()
    assert cli.main(["emit", spec, "-o", str(tmp_path / "v")]) == 0  # the default: the vector backend
    assert "__attribute__" in (tmp_path / "v" / "signal1d.c").read_text()
    capsys.readouterr()
    assert cli.main(["emit", spec, "-o", str(tmp_path / "x"), "--backend", "nope"]) != 0
    assert "portable" in capsys.readouterr().err
    assert cli.main(["emit", spec, "-o", str(tmp_path / "b"), "--backend", BACKEND, "--board", "mps2-an386"]) != 0
    assert "--backend does not apply to --board" in capsys.readouterr().err

"""The int8 command line: `cnncc quantize`, `cnncc emit --int8` (built strict C99, run under
ASan/UBSan, equal to the Python QuantizedModel) and `cnncc check --int8` (exactly what the
emitted program allocates)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.quantize import QuantizedModel

ROOT = Path(__file__).resolve().parent.parent
CC = os.environ.get("CC", "gcc")
STRICT = ["-std=c99", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wshadow"]
SPEC = {"name": "qemit", "input": {"channels": 2, "height": 10, "width": 10},
        "layers": [{"name": "a", "type": "conv2d", "filters": 4, "kernel": 3, "padding": "same"},
                   {"name": "a_bn", "type": "batchnorm"}, {"name": "a_relu", "type": "relu"},
                   {"name": "b", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "groups": 4},
                   {"name": "sum", "type": "add", "inputs": ["a_relu", "b"]},
                   {"name": "pool", "type": "avgpool2d", "kernel": 2},
                   {"name": "gap", "type": "global_avgpool"},
                   {"name": "fc", "type": "dense", "units": 3}],
        "loss": "softmax_cross_entropy"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cnncc", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def files(tmp_path_factory, build_dir):
    root = tmp_path_factory.mktemp("qemit")
    spec = root / "qemit.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(SPEC))
    model = cnncc.compile(spec, build_dir=build_dir).init(3)
    model.params["a_bn.running_var"][...] = [0.5, 1.0, 2.0, 1.5]
    model.save(root / "w.npz")
    rng = np.random.default_rng(0)
    np.savez(root / "cal.npz", x=rng.normal(size=(64, 2, 10, 10)).astype(np.float32))
    x = rng.normal(size=(5, 2, 10, 10)).astype(np.float32)
    x.tofile(root / "input.bin")
    env_build = str(build_dir)
    result = _cli("quantize", spec, "--weights", root / "w.npz", "--calibration", root / "cal.npz",
                  "-o", root / "q.npz", "--build-dir", env_build)
    assert result.returncode == 0, result.stderr
    return root, spec, x, result.stdout


def test_quantize_prints_the_report(files):
    _, _, _, out = files
    assert "a+a_bn+a_relu" in out and "SQNR dB" in out and "int8 arena" in out


def _make(directory, cflags):
    return subprocess.run(["make", "-C", str(directory), f"CC={CC}", f"CFLAGS={' '.join(cflags)}"],
                          capture_output=True, text=True)


@pytest.mark.parametrize("sanitize", [False, True])
def test_emitted_int8_program_equals_the_quantized_model(files, tmp_path, build_dir, sanitize):
    root, spec, x, _ = files
    result = _cli("emit", spec, "--int8", root / "q.npz", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    flags = STRICT + (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if sanitize
                      else ["-O2"])
    built = _make(tmp_path / "out", flags)
    if sanitize and built.returncode and "sanitize" in built.stderr:
        pytest.skip("the compiler cannot build with the sanitizers here")
    assert built.returncode == 0, built.stderr
    run = subprocess.run([tmp_path / "out" / "main", root / "input.bin"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    outputs = np.array([[float(v) for v in line.split()] for line in lines[0::2]], np.float32)
    classes = [int(line.split(": ")[1]) for line in lines[1::2]]
    q = QuantizedModel.load(root / "q.npz", spec, build_dir=build_dir)
    expected = q.predict(x)
    assert np.array_equal(outputs, expected)
    assert classes == list(expected.argmax(axis=1))
    # integer arithmetic only inside the kernels: float32 only in the boundary functions, double nowhere
    model_c = (tmp_path / "out" / "qemit.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", model_c, flags=re.S)
    assert not re.search(r"\bdouble\b", code)
    boundary = re.compile(r"void qemit_quantize_input\(.*?(?=void qemit_run\()", re.S)
    assert len(boundary.findall(code)) == 1 and "float" in boundary.findall(code)[0]
    assert not re.search(r"\bfloat\b", boundary.sub("", code))
    assert re.findall(r"#include <(\w+)\.h>", model_c) == ["stddef", "stdint", "string"]


@pytest.mark.parametrize("compiler", ["tcc", "clang"])
def test_emitted_int8_program_builds_with_tcc_and_clang_weverything(files, tmp_path, build_dir, compiler):
    """The portable backend's compilers for the int8 C too: tcc (not GNU-compatible) and clang
    -Weverything with the portable backend's one list of exceptions, each with its reason."""
    from cnncc.backends.portable import CLANG_WARNINGS_OFF
    from tools import need_command

    need_command(compiler, f"apt-get install -y {compiler}")
    root, spec, x, _ = files
    assert _cli("emit", spec, "--int8", root / "q.npz", "-o", tmp_path / "out").returncode == 0
    flags = ["-std=c99", "-Wall", "-Werror"] if compiler == "tcc" else \
        ["-std=c99", "-Weverything", "-Werror", "-O2", *CLANG_WARNINGS_OFF]
    built = subprocess.run(["make", "-C", str(tmp_path / "out"), f"CC={compiler}", f"CFLAGS={' '.join(flags)}"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    run = subprocess.run([tmp_path / "out" / "main", root / "input.bin"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    outputs = np.array([[float(v) for v in line.split()] for line in run.stdout.splitlines()[0::2]], np.float32)
    assert np.array_equal(outputs, QuantizedModel.load(root / "q.npz", spec, build_dir=build_dir).predict(x))


def test_check_int8_gives_what_the_emitted_program_allocates(files, tmp_path):
    root, spec, _, _ = files
    result = _cli("check", spec, "--int8")
    assert result.returncode == 0, result.stderr
    weights, arena = re.search(r"int8 .*weights ([\d,]+) bytes \(flash\), arena ([\d,]+) bytes", result.stdout).groups()
    _cli("emit", spec, "--int8", root / "q.npz", "-o", tmp_path / "out")
    header = (tmp_path / "out" / "qemit.h").read_text()
    macro = {name: int(value) for name, value in re.findall(r"#define QEMIT_(\w+) (-?\d+)\b", header)}
    assert int(arena.replace(",", "")) == macro["ARENA_SIZE"]
    assert int(weights.replace(",", "")) == macro["WEIGHTS_SIZE"] + 4 * macro["WORDS_SIZE"]


def test_bad_quantized_file_is_a_clear_error(files, tmp_path):
    root, spec, _, _ = files
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    result = _cli("emit", spec, "--int8", bad, "-o", tmp_path / "out")
    assert result.returncode == 1 and "corrupt or truncated" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

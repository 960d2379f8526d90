"""Hostile specs: nothing a spec says reaches C, a file name or a shell unvalidated, and
nothing in a spec can make cnncc compile or allocate something unreasonable.

- Every string field that could reach C (spec and layer names, type, activation, padding,
  loss, optimizer type, dtype, inputs, training schedule) refuses C-comment, preprocessor,
  quote, backslash, newline, NUL, semicolon, shell and terminal-escape payloads with a
  SpecError, through Python dicts, YAML text and the command line (exit 2), and nothing is
  compiled or written.
- YAML tags that construct Python objects are refused and never executed.
- codegen's filters refuse anything else if an IR were ever forged.
- The C compiler runs without a shell; odd file names are names, never commands.
- Size limits: tensors and parameter counts past the limits are refused by `check` before
  any C exists; a batch whose buffers cannot fit in memory is refused before allocating.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import cnncc
import cnncc.buffers
import cnncc.build
import cnncc.runtime
from cnncc import codegen
from cnncc.check import MAX_PARAMS, MAX_TENSOR_ELEMENTS
from cnncc.cli import main as cli_main
from conftest import defined_macros

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "inj",
    "input": {"channels": 1, "height": 8, "width": 8},
    "dtype": "float32",
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 2, "kernel": 3, "padding": 1, "activation": "relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2, "padding": 0, "inputs": ["conv"]},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": "softmax_cross_entropy",
    "optimizer": {"type": "adam", "lr": 0.001},
    "training": {"schedule": "constant"},
}

# Where a string from the spec could travel: (path into the spec, a valid value to extend).
FIELDS = {
    "spec name": (("name",), "inj"),
    "layer name": (("layers", 0, "name"), "conv"),
    "type": (("layers", 0, "type"), "conv2d"),
    "activation": (("layers", 0, "activation"), "relu"),
    "conv padding": (("layers", 0, "padding"), "same"),
    "pool padding": (("layers", 1, "padding"), "valid"),
    "loss": (("loss",), "softmax_cross_entropy"),
    "optimizer type": (("optimizer", "type"), "adam"),
    "dtype": (("dtype",), "float32"),
    "inputs (list)": (("layers", 1, "inputs", 0), "conv"),
    "inputs (string)": (("layers", 1, "inputs"), "conv"),
    "training schedule": (("training", "schedule"), "constant"),
}

MARKER = "PWNED"  # what a shell payload would create in the working directory
PAYLOADS = [
    "*/", "/*", "*/ int evil; /*", "//", "\n#include <stdlib.h>", "#include <stdlib.h>", "#define relu system",
    "\n#define x", '"', "'", '\\"', "\\", "\\\n", "\n", "\r", "\r\n#pragma once", "\x00", ";", "; system(\"id\");",
    f"$(touch {MARKER})", f"`touch {MARKER}`", f"; touch {MARKER}", f"| touch {MARKER}", f"&& touch {MARKER}",
    "a b", "\t", "\x1b[2J\x1b[31m", "\u202e", "conv\u0430", "../../../etc/passwd", "%s%n", "{{ model }}",
    "{% include 'model.c.j2' %}", "??/", "x" * 65, "", " ",
]


def _set(spec: dict, path: tuple, value) -> dict:
    spec = copy.deepcopy(spec)
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


def _variants(payload: str, valid: str) -> list[str]:
    """The payload alone, after a valid value (anchoring) and before one."""
    return [payload, valid + payload, payload + valid]


def _assert_refused(source, build: Path, what: str) -> cnncc.SpecError:
    before = cnncc.build.compile_count
    with pytest.raises(cnncc.SpecError) as info:
        cnncc.compile(source, build_dir=build)
    assert cnncc.build.compile_count == before, what
    assert not build.exists(), f"{what}: the build directory was created"
    text = info.value.format()
    # Nothing from the spec reaches the terminal raw either: no control characters.
    assert all(ch.isprintable() or ch == "\n" for ch in text), f"{what}: {text!r}"
    return info.value


def test_the_base_spec_is_valid():
    report = cnncc.check(BASE)
    assert [row.output_shape for row in report.rows] == [(2, 8, 8), (2, 4, 4), (32,), (3,)]


@pytest.mark.parametrize("field", FIELDS)
def test_payloads_in_every_string_field_are_refused_before_compiling(field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, valid = FIELDS[field]
    build = tmp_path / "build"
    checked = 0
    for payload in PAYLOADS:
        for value in _variants(payload, valid):
            if value == valid:
                continue
            spec = _set(BASE, path, value)
            _assert_refused(spec, build, f"{field}={value!r} (dict)")
            _assert_refused(yaml.safe_dump(spec, allow_unicode=True), build, f"{field}={value!r} (YAML)")
            checked += 2
    assert checked > 200
    assert list(tmp_path.iterdir()) == [], "a payload created a file"


def test_payloads_as_keys_are_refused(tmp_path):
    for payload in PAYLOADS:
        if not payload:
            continue
        _assert_refused(_set(BASE, ("layers", 0, payload), 1), tmp_path / "build", f"layer key {payload!r}")
        _assert_refused({**BASE, payload: 1}, tmp_path / "build", f"top-level key {payload!r}")


def test_cli_exits_2_and_compiles_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build"
    sample = [("spec name", "x */\n#include <stdlib.h>"), ("layer name", f"conv; touch {MARKER}"),
              ("activation", "relu\n#define relu system"), ("inputs (list)", "conv\x00"),
              ("training schedule", f"$(touch {MARKER})")]
    before = cnncc.build.compile_count
    for index, (field, value) in enumerate(sample):
        path = tmp_path / f"bad{index}.yaml"
        path.write_text(yaml.safe_dump(_set(BASE, FIELDS[field][0], value), allow_unicode=True), encoding="utf-8")
        for command in (["check", str(path)], ["train", str(path), "--build-dir", str(build), "--quiet"]):
            assert cli_main(command) == 2, (field, command)
            err = capsys.readouterr().err
            assert "error:" in err and all(ch.isprintable() or ch == "\n" for ch in err)
    assert cnncc.build.compile_count == before and not build.exists()
    # And once through a real process, as a user would run it.
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "cnncc", "train", str(tmp_path / "bad1.yaml"), "--build-dir",
                             str(build)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "must be a C identifier" in result.stderr
    assert not build.exists() and not (tmp_path / MARKER).exists()


# ---- YAML tags --------------------------------------------------------------------------
def _tagged(marker: Path) -> dict[str, str]:
    text = yaml.safe_dump(BASE, sort_keys=False)
    opener = f"!!python/object/apply:builtins.open ['{marker}', 'w']"
    return {
        "open as the name": text.replace("name: inj", f"name: {opener}", 1),
        "open as the whole spec": opener,
        "os.system": text.replace("name: inj", f"name: !!python/object/apply:os.system ['touch {marker}']", 1),
        "subprocess in layers": text.replace(
            "layers:", f"layers: !!python/object/apply:subprocess.check_call [['touch', '{marker}']]\nx:", 1),
        "object/new": text.replace("dtype: float32", f"dtype: !!python/object/new:builtins.open ['{marker}', 'w']"),
        "python/name": text.replace("loss: softmax_cross_entropy", "loss: !!python/name:os.system"),
        "python/module": text.replace("loss: softmax_cross_entropy", "loss: !!python/module:os"),
        "as a key": text + f"? {opener}\n: 1\n",
        "behind an alias": text + f"extra: &evil {opener}\nmore: *evil\n",
        "in a flow list": text.replace("  inputs:\n  - conv", f"  inputs: [conv, {opener}]"),
        "local tag": text.replace("name: inj", "name: !evil inj"),
        "binary": text.replace("name: inj", "name: !!binary aW5q"),
        "set": text.replace("name: inj", "name: !!set {inj}"),
        "timestamp": text.replace("name: inj", "name: !!timestamp 2020-01-01"),
    }


def test_python_tags_are_live_payloads(tmp_path):
    """The control experiment: an unsafe loader would run this payload (so the tests below mean something)."""
    marker = tmp_path / "control"
    yaml.unsafe_load(_tagged(marker)["open as the name"]).get("name").close()
    assert marker.exists()


@pytest.mark.parametrize("case", list(_tagged(Path("m"))))
def test_yaml_tags_are_refused_and_never_run(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    text = _tagged(marker)[case]
    assert "!" in text  # the replacement happened
    error = _assert_refused(text, tmp_path / "build", case)
    assert "tag" in str(error) or "not allowed" in str(error) or "keys must be plain strings" in str(error)
    spec_file = tmp_path / "tagged.yaml"
    spec_file.write_text(text)
    with pytest.raises(cnncc.SpecError):
        cnncc.check(spec_file)
    assert not marker.exists()


# ---- codegen's filters, if an IR were ever forged ---------------------------------------
BAD_IDENTIFIERS = ["", "1x", "x y", "x;", "x*/", "x\n", "x\x00", "x-y", "x.y", "é", "x" * 129, "(x)", "x[0]",
                   None, 1, True, b"x", ["x"]]


def test_c_ident_refuses_everything_but_identifiers():
    for value in BAD_IDENTIFIERS:
        with pytest.raises(ValueError):
            codegen.c_ident(value)
    assert codegen.c_ident("conv1_weight") == "conv1_weight" and codegen.c_ident("_x" * 64) == "_x" * 64


def test_c_int_refuses_everything_but_ints():
    for value in (True, False, 1.0, "1", "1; evil", None, 1 << 62, -(1 << 62), 10 ** 30, np.float64(1), [1]):
        with pytest.raises(ValueError):
            codegen.c_int(value)
    assert [codegen.c_int(v) for v in (0, -5, (1 << 62) - 1, np.int64(7).item())] == ["0", "-5", str((1 << 62) - 1),
                                                                                        "7"]


def test_c_float_refuses_non_finite_and_non_numbers():
    for value in (math.nan, math.inf, -math.inf, True, False, "1.0", "0.5; evil", None, 1j, [1.0]):
        with pytest.raises(ValueError):
            codegen.c_float(value)
    with pytest.raises((ValueError, OverflowError)):
        codegen.c_float(10 ** 400)
    assert codegen.c_float(3) == "3.0" and codegen.c_float(-0.0) == "-0.0" and codegen.c_float(1e-300) == "1e-300"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_c_float_round_trips_exactly(value):
    text = codegen.c_float(value)
    assert float(text) == value and math.copysign(1, float(text)) == math.copysign(1, value)
    assert set(text) <= set("0123456789.e+-") and ("." in text or "e" in text)  # a double literal, nothing else


def test_c_comment_and_c_expr_refuse_what_could_escape():
    for value in ("*/", "a */ b", "/*", "x\ny", "x\\", "x\\\ny"):
        with pytest.raises(ValueError):
            codegen.c_comment(value)
    assert codegen.c_comment("conv1: 3x3, stride 2 (spec line 4)") == "conv1: 3x3, stride 2 (spec line 4)"
    for value in ("x; system(0)", "x\n#define y", "x, y", '"x"', "'x'", "{x}", "x # y", "$x", "`x`", "x\\", 1, None):
        with pytest.raises(ValueError):
            codegen.c_expr(value)
    assert codegen.c_expr("x > 0 ? x : ALPHA * x") == "x > 0 ? x : ALPHA * x"


def test_c_comment_refuses_a_trigraph_comment_close():
    with pytest.raises(ValueError):
        codegen.c_comment("x*??/\r/ int evil = 1; //")


def _program():
    spec = copy.deepcopy(BASE)
    spec["layers"].insert(1, {"name": "drop", "type": "dropout", "rate": 0.5})
    spec["layers"].insert(1, {"name": "leak", "type": "leaky_relu", "alpha": 0.1})
    return cnncc.check(spec).program


def _with_op(program, index, **changes):
    ops = list(program.ops)
    ops[index] = dataclasses.replace(ops[index], **changes)
    return dataclasses.replace(program, ops=tuple(ops))


def _with_setting(program, index, key, value):
    """The program with one setting of an op's kernel plan forged."""
    plan = program.ops[index].plan
    return _with_op(program, index, plan=dataclasses.replace(plan, settings={**plan.settings, key: value}))


def test_a_forged_ir_is_refused_by_the_filters():
    program = _program()
    assert "evil" not in codegen.render(program).source  # the honest IR renders
    ops = {op.name: i for i, op in enumerate(program.ops)}
    param = program.params[0]
    forged = {
        "program name": dataclasses.replace(program, name="inj; int evil"),
        "tensor name": _with_op(program, 0, output=dataclasses.replace(program.ops[0].output, name="x; evil")),
        "tensor offset": _with_op(program, 0, output=dataclasses.replace(program.ops[0].output, offset="0; evil")),
        "parameter key": dataclasses.replace(program, params=(dataclasses.replace(param, key="conv.w; evil"),)
                                             + program.params[1:]),
        "parameter offset": dataclasses.replace(program, params=(dataclasses.replace(param, offset="0; evil"),)
                                                + program.params[1:]),
        "activation size": dataclasses.replace(program, activation_size="1; evil"),
        "loss classes": dataclasses.replace(program, loss=dataclasses.replace(program.loss, classes="3; evil")),
        "spec line": _with_op(program, 0, line="4 */ evil"),
        "op name with a comment close": _with_op(program, 0, name="conv */ evil"),
        "kernel expression": _with_setting(program, ops["leak"], "forward_expr", "x; evil"),
        **{f"{op_name}.{key} = {bad!r}": _with_setting(program, ops[op_name], key, bad)
           for op_name, key in (("leak", "alpha"), ("drop", "rate"), ("drop", "scale"))
           for bad in (math.nan, math.inf, "0.5; evil", True)},
    }
    for what, bad in forged.items():
        with pytest.raises(ValueError):
            codegen.render(bad)
            pytest.fail(f"{what} rendered")


def test_every_ir_string_goes_through_a_filter():
    program = _program()
    for forged in (_with_op(program, 0, name="conv(void); int evil"), _with_op(program, 0, kind="conv2d */ evil"),
                   dataclasses.replace(program, params=(dataclasses.replace(program.params[0],
                                                                            shape=("*/ evil /*", 3)),)
                                       + program.params[1:])):
        with pytest.raises(ValueError):
            codegen.render(forged)


def test_every_name_in_an_honest_ir_is_an_identifier():
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        program = cnncc.check(path).program
        names = [program.name] + [op.name for op in program.ops] + [op.output.macro for op in program.ops]
        names += [p.macro for p in program.params]
        for name in names:
            assert codegen.c_ident(name) == name


# ---- names from the spec become C names: they must not collide -----------------------------
def _c_names(sources) -> tuple[list[str], set[str]]:
    """(every macro #defined, every enum constant) in a model's header and source."""
    text = sources.header + sources.source
    macros = defined_macros(text)
    enums = set(re.findall(r"^\s+([A-Z][A-Z0-9_]*) = ", text, re.MULTILINE))
    return macros, enums


def _assert_no_collision(spec) -> None:
    report = cnncc.check(spec)
    macros, enums = _c_names(codegen.render(report.program, report.spec.path))
    repeated = sorted({m for m in macros if macros.count(m) > 1} - {report.spec.name.upper() + "_H"})
    assert not repeated, f"macros defined twice: {repeated}"
    assert not set(macros) & enums, f"macros that rename enum constants: {sorted(set(macros) & enums)}"


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_generated_names_do_not_collide(path):
    _assert_no_collision(path)


COLLIDING = {
    # A model named 'a' defines A_NUM_TRAINABLE; a layer named 'num_trainable' defines it again as its
    # offset, and the optimizer loops over that many parameters (a heap overflow: see test_sanitizers).
    "size macro": {"name": "a", "input": {"channels": 1, "height": 8, "width": 8},
                   "layers": [{"name": "num_trainable", "type": "conv2d", "filters": 2, "kernel": 3},
                              {"type": "flatten"}, {"type": "dense", "units": 2}], "loss": "mse"},
    # A batchnorm named 'in' defines its workspace offset W_IN, which renames every kernel's W_IN.
    "workspace macro": {"name": "m", "input": {"channels": 1, "height": 8, "width": 8},
                        "layers": [{"name": "in", "type": "batchnorm"},
                                   {"type": "conv2d", "filters": 2, "kernel": 3}]},
}


@pytest.mark.parametrize("case", COLLIDING)
def test_layer_names_cannot_collide_with_generated_macros(case, tmp_path):
    try:
        _assert_no_collision(COLLIDING[case])
    except cnncc.SpecError:
        return  # refused with a clear error: also a fix


# ---- the compiler runs without a shell ---------------------------------------------------
def test_the_compiler_runs_without_a_shell(tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run

    def recording_run(*args, **kwargs):
        calls.append((args, kwargs))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cnncc.build.subprocess, "run", recording_run)
    cnncc.build._compiler_identity.cache_clear()  # so the `--version` call is recorded too
    monkeypatch.chdir(tmp_path)
    weird = tmp_path / f"a dir; touch {MARKER} $(touch {MARKER}) `touch {MARKER}`"
    weird.mkdir()
    spec_path = weird / f"my spec; touch {MARKER} & $(touch {MARKER}).yaml"
    spec_path.write_text(yaml.safe_dump(dict(BASE, name="noshell")))
    build = weird / "build $(id)"
    before = cnncc.build.compile_count
    model = cnncc.compile(spec_path, build_dir=build)
    assert cnncc.build.compile_count == before + 1
    assert model.spec.path == str(spec_path)
    assert model.forward(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 3)
    assert len(calls) >= 2  # the version query and the compilation
    for args, kwargs in calls:
        command = args[0] if args else kwargs["args"]
        assert isinstance(command, list) and all(isinstance(part, str) for part in command)
        assert not kwargs.get("shell") and "executable" not in kwargs
    compile_command = calls[-1][0][0]
    assert any(str(build) in part for part in compile_command)  # the odd path is one argument
    assert not list(tmp_path.rglob(MARKER)) and not list(Path.cwd().glob(MARKER))
    # The command line reads the same file by name.
    assert cli_main(["check", str(spec_path)]) == 0


def test_a_spec_file_name_that_cannot_be_a_c_comment_is_refused_before_compiling(tmp_path):
    path = tmp_path / "back\\slash.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, name="oddname")))
    before = cnncc.build.compile_count
    with pytest.raises(ValueError, match="C comment"):
        cnncc.compile(path, build_dir=tmp_path / "build")
    assert cnncc.build.compile_count == before and not (tmp_path / "build").exists()


@pytest.mark.parametrize("path", ["spec\x00.yaml", "spec\ud800.yaml"], ids=["NUL", "surrogate"])
def test_an_impossible_spec_path_is_a_spec_error(path):
    with pytest.raises(cnncc.SpecError, match="cannot read spec"):
        cnncc.check(path)


# ---- size limits ------------------------------------------------------------------------
def _flat_input(n):
    return {"channels": 1, "length": n}


HUGE = {
    "input over the tensor limit": {"name": "big", "input": {"channels": 2048, "height": 1024, "width": 1024},
                                    "layers": [{"type": "relu"}]},
    "conv output over the tensor limit": {"name": "big", "input": {"channels": 1, "height": 64, "width": 64},
                                          "layers": [{"type": "conv2d", "filters": 1 << 20, "kernel": 1}]},
    "padding grows a tensor past the limit": {"name": "big", "input": {"channels": 1, "height": 1, "width": 1},
                                              "layers": [{"type": "conv2d", "filters": 1, "kernel": 1,
                                                          "padding": 1 << 20}]},
    "concat past the limit": {"name": "big", "input": {"channels": 1, "height": 32768, "width": 32768},
                              "layers": [{"type": "concat", "inputs": ["input", "input", "input"]}]},
    "one dense layer over the parameter limit": {"name": "big", "input": _flat_input(1 << 20),
                                                 "layers": [{"type": "flatten"}, {"type": "dense", "units": 4096}]},
    "three layers over the parameter limit together": {
        "name": "big", "input": _flat_input(1 << 20),
        "layers": [{"name": "flat", "type": "flatten"},
                   *({"name": f"d{i}", "type": "dense", "units": 1000, "inputs": ["flat"]} for i in range(3)),
                   {"type": "concat", "inputs": ["d0", "d1", "d2"]}]},
}


@pytest.mark.parametrize("case", HUGE)
def test_sizes_past_the_limits_are_refused_before_any_c(case, tmp_path):
    tracemalloc.start()
    try:
        error = _assert_refused(HUGE[case], tmp_path / "build", case)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"checking allocated {peak:,} bytes"  # arithmetic only, no buffers
    limit = f"{MAX_PARAMS:,}" if "parameter" in case else f"{MAX_TENSOR_ELEMENTS:,}"
    assert f"the limit is {limit}" in str(error)


def test_sizes_just_under_the_limits_are_accepted_without_allocating():
    tracemalloc.start()
    try:
        report = cnncc.check({"name": "big", "input": _flat_input(1 << 20),
                              "layers": [{"type": "flatten"}, {"type": "dense", "units": 2047}]})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.totals["params"] == (1 << 20) * 2047 + 2047 <= MAX_PARAMS
    assert report.totals["training_bytes"] > 16e9 and peak < 20 << 20  # 16 GB described, not allocated


def test_a_huge_pooling_window_averages_correctly(build_dir):
    spec = {"name": "bigwindow", "input": {"channels": 1, "height": 3, "width": 3},
            "layers": [{"type": "avgpool2d", "kernel": 65536, "padding": 32768}, {"type": "flatten"}]}
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",))
    out = model.forward(np.ones((1, 1, 3, 3)))
    assert out[0, 0] == pytest.approx(9 / 65536 ** 2)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    spec = {"name": "wide", "input": {"channels": 1, "height": 64, "width": 64},
            "layers": [{"name": "conv", "type": "conv2d", "filters": 8, "kernel": 3, "padding": 1},
                       {"type": "global_avgpool"}, {"type": "dense", "units": 2}],
            "loss": "softmax_cross_entropy"}
    return cnncc.compile(spec, build_dir=tmp_path_factory.mktemp("wide-build"), cflags=("-O1",))


def _state(model):
    return model._capacity, model._acts, model._grad_acts, model._params.copy()


def test_a_batch_larger_than_memory_is_refused_before_allocating(wide_model):
    model = wide_model
    model.forward(np.zeros((2, 1, 64, 64), np.float32))
    capacity, acts, grad_acts, params = _state(model)
    batch = 10 ** 9
    needed = model.program.buffer_bytes(batch, training=True)
    assert needed > cnncc.buffers.physical_memory()
    with pytest.raises(ValueError, match=f"needs {needed:,} bytes") as info:
        model._ensure_capacity(batch, training=True)
    assert "smaller batch" in str(info.value)
    assert model._capacity == capacity and model._acts is acts and model._grad_acts is grad_acts
    assert np.array_equal(model._params, params)
    assert model.forward(np.zeros((2, 1, 64, 64), np.float32)).shape == (2, 2)  # still usable


def test_the_memory_guard_protects_the_public_calls(wide_model, monkeypatch):
    model = wide_model
    x = np.random.default_rng(0).normal(size=(64, 1, 64, 64)).astype(np.float32)
    y = np.zeros(64, np.int64)
    small = model.program.buffer_bytes(4, training=True)
    monkeypatch.setattr(cnncc.buffers, "physical_memory", lambda: small)
    fresh = cnncc.Model(model.analysis, model.module)  # no buffers yet
    before = fresh._params.copy()
    for call in (lambda: fresh.forward(x), lambda: fresh.train_step(x, y), lambda: fresh.gradients(x, y),
                 lambda: fresh.fit(x, y, batch_size=64, epochs=1, verbose=0)):
        with pytest.raises(ValueError, match="smaller batch"):
            call()
    assert np.array_equal(fresh._params, before) and fresh.step_count == 0 and fresh._acts is None
    assert fresh.forward(x[:4]).shape == (4, 2) and fresh.forward(x, batch_size=4).shape == (64, 2)
    # Where the platform does not say how much memory there is, size_t still bounds a buffer.
    monkeypatch.setattr(cnncc.buffers, "physical_memory", lambda: None)
    with pytest.raises(ValueError, match="size_t"):
        fresh._ensure_capacity(sys.maxsize // 4, training=False)


def test_physical_memory_is_known_here():
    memory = cnncc.buffers.physical_memory()
    assert memory is None or memory > 64 << 20
    if sys.platform.startswith("linux"):
        assert memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

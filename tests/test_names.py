"""No spec name can collide with anything generated, reserved or from libc.

A systematic list of names (C keywords, libc and libm functions, system header guards, every
identifier the templates generate for themselves, and prefix/suffix splits of those) is used as
the model's name and as layer names; each must either be refused by the checker with a location,
or render C that compiles cleanly under -Wall -Wextra -Werror (the Python module's sources and
the inference-only ones); a sample goes through `cnncc emit` + link and through the Python build
and load. Identifiers the templates make up for themselves are also checked by construction:
none of them has the shape of a spec-derived identifier.
"""
from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc import ir, lowering
from cnncc.check import check_net
from cnncc.codegen import render
from cnncc.emit import emit
from cnncc.errors import SpecError
from cnncc.fields import reserved_identifier_problem
from cnncc.memplan import inference_program, plan
from tools import need_command

ROOT = Path(__file__).resolve().parents[1]
C_KEYWORDS = ("auto break case char const continue default do double else enum extern float for goto if inline "
              "int long register restrict return short signed sizeof static struct switch typedef union unsigned "
              "void volatile while bool true false asm typeof").split()
LIBC = ("main memset memcpy memmove strlen printf fprintf puts malloc calloc free exit abort abs labs div "
        "exp expf log logf sqrt sqrtf pow powf fabs fabsf fmax fmaxf fmin tanh tanhf erf floor ceil round "
        "sin cos isnan isinf isfinite nan INFINITY NAN NULL EOF stdin stdout stderr errno size_t ptrdiff_t "
        "uint64_t int32_t uint32_t int8_t SIZE_MAX INT_MAX UINT64_C omp_get_max_threads omp_set_num_threads "
        "omp_get_thread_num omp_get_level pthread_create assert offsetof va_list FILE time clock rand").split()
HEADER_GUARDS = ("stdint stdint_h STDINT_H math math_h MATH_H stddef stddef_h STDDEF_H string string_h "
                 "stdio_h stdlib_h omp omp_h features features_h limits_h float_h H h").split()
REFUSED = ("_stdint _math _STDINT_H _MATH_H __x _x a__b x_ __STDC__ _Bool _Pragma cnncc cnncc_model "
           "CNNCC_GEMM Cnncc_x").split()
SPEC_SUFFIXES = ("forward", "backward", "forward_slot", "output", "loss", "zero_grad", "step", "train_step",
                 "set_threads", "activations_size", "context", "hyper", "weights")
SPECS = [ROOT / "specs" / "lenet5.yaml", ROOT / "specs" / "resnet_small.yaml", ROOT / "specs" / "signal1d.yaml",
         ROOT / "specs" / "vgg_cifar.yaml"]


def _net(name: str, layer_names=("c", "d")) -> dict:
    first, last = layer_names
    return {"name": name, "input": {"channels": 2, "height": 6, "width": 6},
            "layers": [{"name": first, "type": "conv2d", "filters": 2, "kernel": 3, "activation": "relu"},
                       {"type": "batchnorm"}, {"type": "maxpool2d", "kernel": 2}, {"type": "flatten"},
                       {"type": "dropout", "rate": 0.1}, {"name": last, "type": "dense", "units": 2}],
            "loss": "softmax_cross_entropy", "optimizer": {"type": "adam"}}


@lru_cache(maxsize=1)
def generated_vocabulary() -> frozenset[str]:
    """Every identifier in the rendered C of the example specs that no spec name produced."""
    words: set[str] = set()
    for path in SPECS:
        program = cnncc.check(path).program
        sources = render(program, str(path))
        text = re.sub(r"/\*.*?\*/", " ", sources.header + sources.source, flags=re.S)
        spec_words = {program.name} | {op.name for op in program.ops}
        for word in set(re.findall(r"\b[A-Za-z_]\w*\b", text)):
            upper = word.upper()
            if any(w in word or w.upper() in upper for w in spec_words if len(w) > 2):
                continue
            words.add(word)
    return frozenset(words - set(C_KEYWORDS))


def _template_helpers() -> list[str]:
    """The functions, types and macros the templates define for themselves."""
    found = set()
    for path in (ROOT / "templates").rglob("*.j2"):
        text = path.read_text()
        found.update(re.findall(r"^\s*#\s*define\s+([A-Za-z_]\w*)", text, re.M))
        found.update(re.findall(r"^(?:static|KERNEL_INLINE)[\w\s\*]*?\b([a-z_]\w*)\s*\(", text, re.M))
        found.update(re.findall(r"typedef[^;{]*?\b(\w+)\s*(?:__attribute__\(\(.*?\)\))?\s*;", text))
        found.update(re.findall(r"^\}\s*([A-Za-z_]\w*)\s*;", text, re.M))  # typedef struct {...} name;
        found.update(re.findall(r"typedef\s+\{\{[^}]*\}\}\s+(\w+)\s*;", text))  # typedef {{ c_type }} real;
        # helpers named after the model ({{ model }}_gemm_nt): their suffix is what a layer or a
        # model name could spell, so it belongs on the list too
        found.update(re.findall(r"\{\{ model \}\}_([a-z]\w*)\s*\(", text))
    # names the generated C used before helpers took the model's prefix: still worth trying
    found.update(("run_state", "gemm_nt", "gemm_nn", "im2col", "window_end", "uniform01", "pad_planes"))
    return sorted(name for name in found if "{" not in name)


def _kernel_constants() -> set[str]:
    """The named dimensions of every op of the example specs (C_IN, DIL_H, STRIDE, ...)."""
    return {name for path in SPECS for op in cnncc.check(path).program.ops
            for dims in (op.plan.forward_dims, op.plan.backward_dims) for name in dims}


def name_list() -> list[str]:
    helpers = _template_helpers() + sorted(_kernel_constants())
    splits = {part for name in helpers for i in range(1, name.count("_") + 1)
              for part in name.rsplit("_", i)[:1] + name.split("_", i)[i:]}
    names = set(C_KEYWORDS) | set(LIBC) | set(HEADER_GUARDS) | set(helpers) | splits
    names |= set(SPEC_SUFFIXES)
    # Macros are upper-cased spec names: one spelling per name is enough for them, and lower case
    # is what reaches the lower-case symbols as well (KERNEL_INLINE is kept as a sample of upper case).
    by_case = {name.lower(): name.lower() for name in names} | {"kernel_inline": "KERNEL_INLINE"}
    return sorted(n for n in by_case.values()
                  if re.fullmatch(r"[A-Za-z_]\w{0,63}", n) and not reserved_identifier_problem(n))


def test_the_list_is_systematic():
    names = set(name_list())
    for expected in ("dil", "dil_h", "stride", "stride_h", "gemm_nt", "window_end", "uniform01", "im2col", "run_state", "real",
                     "KERNEL_INLINE", "exp", "int", "stdint_h", "math_h", "step", "gemm", "nt_accumulate"):
        assert expected in names, expected
    assert len(names) > 150


def test_generated_identifiers_cannot_be_spelt_by_a_spec():
    """Spec-derived identifiers are <model>_<suffix>, <model>_<layer>_<suffix>, <MODEL>_<SUFFIX>,
    P_/A_/WS_<LAYER...> and CNNCC_<MODEL>_H; no identifier the templates make up has those shapes
    (else a model or layer name could redefine it)."""
    vocabulary = generated_vocabulary()
    # (the helpers carry the model's prefix, <model>_gemm_nn: what is left is macros, types, constants)
    assert {"KERNEL_INLINE", "PARALLEL_FOR", "NN_ROWS", "C_IN", "SCRATCH_PATCHES"} <= vocabulary
    for word in vocabulary:
        assert not word.endswith(tuple("_" + s for s in SPEC_SUFFIXES)), word
        assert not word.endswith(tuple("_" + s for s in ir.PUBLIC_MACRO_SUFFIXES if s != "H")), word
        assert not word.upper().startswith("CNNCC_"), word
        assert not word.startswith(("P_", *ir.MACRO_PREFIXES)), word


@pytest.mark.parametrize("name", REFUSED)
def test_reserved_names_are_refused_with_a_location(name):
    text = (f"name: {name}\ninput: {{channels: 1, length: 4}}\nlayers:\n  - {{type: flatten}}\n"
            f"  - {{name: {name}, type: relu}}\n")
    with pytest.raises(SpecError) as info:
        cnncc.load_spec(text)
    message = str(info.value)
    assert "<string>:1:7" in message and "<string>:5:" in message
    assert "underscore" in message or "reserved" in message


SENTINEL = "zqxmodel"  # a model name appearing nowhere else in the rendered C


def _render(name: str, spec: dict | None = None, inference: bool = False) -> tuple[str, str]:
    program = lowering.lower(check_net(cnncc.load_spec(spec or _net(name))))
    if inference:
        program = inference_program(program, plan(program), batch=2, weights=False)
    sources = render(program)
    return sources.header, sources.source


@lru_cache(maxsize=1)
def _sentinel_sources() -> tuple[str, str]:
    return _render(SENTINEL)


def _renamed(name: str) -> tuple[str, str]:
    """The sources of the net named `name`: the model name reaches the templates only as
    {{ model }} and {{ model | upper }}, so this is the rendering itself (checked on a sample
    below) at a tenth of the cost."""
    return tuple(text.replace(SENTINEL, name).replace(SENTINEL.upper(), name.upper())
                 for text in _sentinel_sources())


def _compile_all(tmp_path: Path, units: list[tuple[str, tuple[str, str]]]) -> None:
    """-fsyntax-only -Wall -Wextra -Werror over every unit, in batches (one compiler driver each)."""
    gcc = need_command("gcc", "apt-get install -y gcc")
    paths = []
    for index, (name, (header, source)) in enumerate(units):
        directory = tmp_path / str(index)
        directory.mkdir()
        (directory / f"{name}.h").write_text(header)
        (directory / f"{name}.c").write_text(source)
        paths.append(directory / f"{name}.c")
    chunks = [paths[i:i + 60] for i in range(0, len(paths), 60)]

    def run(chunk):
        return subprocess.run([gcc, "-std=c99", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *map(str, chunk)],
                              capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in pool.map(run, chunks):
            assert result.returncode == 0, result.stderr[-3000:]


def test_renaming_is_rendering():
    names = name_list()
    for name in names[:: max(1, len(names) // 12)] + ["a", "ws", "p", "h"]:
        assert _renamed(name) == _render(name), name


def test_every_listed_name_as_the_model_name_compiles_cleanly(tmp_path):
    units = [(name, _renamed(name)) for name in name_list()]
    units += [(name, _render(name, inference=True)) for name in ("dil", "stride", "gemm_nt", "math_h", "real")]
    _compile_all(tmp_path, units)


def _chain(model: str, names: list[str]) -> dict:
    """One layer per name, cycling through kinds with parameters (P_ macros), workspace (WS_)
    and plain outputs (A_): every per-op identifier shape."""
    kinds = [{"type": "conv2d", "filters": 2, "kernel": 1}, {"type": "batchnorm"}, {"type": "relu"},
             {"type": "maxpool2d", "kernel": 1}]
    layers = [{"name": name, **kinds[i % len(kinds)]} for i, name in enumerate(names)]
    return {"name": model, "input": {"channels": 2, "height": 3, "width": 3},
            "layers": layers + [{"type": "flatten"}, {"name": "last", "type": "dense", "units": 2}],
            "loss": "softmax_cross_entropy"}


def _layer_names() -> list[str]:
    names = [n for n in name_list() if n.lower() not in ("input", "last")]
    return list({n.lower(): n for n in names}.values())


def test_every_listed_name_as_a_layer_name_compiles_cleanly(tmp_path):
    names = _layer_names()
    units = [(model, _render(model, _chain(model, names), inference)) for model in ("m", "a", "gemm")
             for inference in (False, True)]
    _compile_all(tmp_path, units)


@pytest.mark.parametrize("name", ["dil", "stride", "gemm_nt", "math_h"])
def test_emitted_files_build_and_link_and_the_python_build_loads(name, tmp_path, build_dir):
    gcc = need_command("gcc", "apt-get install -y gcc")
    spec = _net(name, ("nt", "accumulate")) if name == "gemm_nt" else _net(name)
    out = emit(spec, tmp_path / "c")
    sources = [str(p) for p in out.files if p.suffix == ".c"]
    result = subprocess.run([gcc, "-std=c99", "-O0", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "main"),
                             *sources, "-lm"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O0",))
    x = np.random.default_rng(0).normal(size=(3, 2, 6, 6))
    assert np.isfinite(model.predict(x)).all() and np.isfinite(model.train_step(x, np.array([0, 1, 0])))

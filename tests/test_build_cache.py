"""The build cache heals: an incomplete or corrupt entry is rebuilt (atomically), everything
else is a BuildError with a sentence; $CC is split like a shell would and respected, or refused."""
from __future__ import annotations

import os

import numpy as np
import pytest

import cnncc
import cnncc.build
from cnncc.build import MANIFEST, BuildError

SPEC = {"name": "cache_heal", "input": {"channels": 1, "length": 4},
        "layers": [{"type": "flatten"}, {"name": "out", "type": "dense", "units": 2}], "loss": "mse"}
FLAGS = ("-O0",)
X = np.ones((2, 1, 4))


def _compile(build, **options):
    return cnncc.compile(SPEC, build_dir=build, cflags=FLAGS, **options)


def _entry(build):
    (entry,) = [p for p in build.iterdir() if not p.name.startswith(".")]
    return entry


def _replace(path, data: bytes) -> None:
    """Damage as another process would: a new file under the name. (Truncating in place the
    library this very process has mapped would crash the test itself, not test the cache.)"""
    (path.parent / "x.tmp").write_bytes(data)
    os.replace(path.parent / "x.tmp", path)


DAMAGE = {
    "library deleted": lambda e: (e / "cache_heal.so").unlink(),
    "library truncated": lambda e: _replace(e / "cache_heal.so", (e / "cache_heal.so").read_bytes()[:100]),
    "library emptied": lambda e: _replace(e / "cache_heal.so", b""),
    "header deleted": lambda e: (e / "cache_heal.h").unlink(),
    "source changed": lambda e: _replace(e / "cache_heal.c", b"int x;\n"),
    "declarations deleted": lambda e: (e / "cache_heal_ffi.py").unlink(),
    # the parsed declarations are Python that loading runs: a forged file fails the manifest first
    "declarations forged": lambda e: _replace(e / "cache_heal_ffi.py", b"raise SystemExit('forged module ran')\n"),
    "manifest deleted": lambda e: (e / MANIFEST).unlink(),
    "manifest garbage": lambda e: _replace(e / MANIFEST, b"{not json"),
    "everything deleted": lambda e: [p.unlink() for p in e.iterdir()],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_rebuilt_and_then_cached(tmp_path, damage):
    build = tmp_path / "build"
    reference = _compile(build).init(0).predict(X)
    DAMAGE[damage](_entry(build))
    before = cnncc.build.compile_count
    model = _compile(build)
    assert not model.module.from_cache and cnncc.build.compile_count == before + 1
    assert np.array_equal(model.init(0).predict(X), reference)
    assert _compile(build).module.from_cache
    assert [p.name for p in build.iterdir()] == [_entry(build).name]  # nothing left aside


def test_a_build_dir_that_is_a_file_is_a_build_error(tmp_path):
    (tmp_path / "build").write_text("")
    with pytest.raises(BuildError, match="exists and is not a directory"):
        _compile(tmp_path / "build")


def test_a_build_dir_starting_with_a_dash_is_not_an_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _compile("-oops")
    assert model.module.path.is_relative_to(tmp_path / "-oops")


@pytest.mark.parametrize("cc, match", [
    ("/nonexistent/cc", "'/nonexistent/cc', which is not an executable"),
    ("no-such-compiler-anywhere -O2", "'no-such-compiler-anywhere'"),
    ('gcc "unclosed', "cannot be split"),
])
def test_a_compiler_that_cannot_be_found_is_refused_not_replaced(tmp_path, monkeypatch, cc, match):
    monkeypatch.setenv("CC", cc)
    with pytest.raises(BuildError, match=match):
        _compile(tmp_path / "build")
    with pytest.raises(BuildError, match=match.replace("$CC", "the cc argument")):
        monkeypatch.delenv("CC")
        _compile(tmp_path / "build", cc=cc)


def test_a_compiler_that_writes_nothing_is_a_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "true")
    with pytest.raises(BuildError, match="wrote no library"):
        _compile(tmp_path / "build")
    assert not [p for p in (tmp_path / "build").iterdir() if not p.name.startswith(".")]


def test_cc_with_arguments_is_split_and_respected(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CC", "gcc -DCNNCC_TEST_MARK=1 -Wno-unused-macros")
    monkeypatch.setenv("CNNCC_DEBUG", "1")
    model = _compile(tmp_path / "build")
    assert np.isfinite(model.predict(X)).all()
    err = capfd.readouterr().err
    assert "-DCNNCC_TEST_MARK=1" in err and os.path.isabs(err.split("cnncc: ")[-1].split()[0])
    monkeypatch.setenv("CC", "gcc")
    assert not _compile(tmp_path / "build").module.from_cache  # another command: another entry


# ---- what the key leaves out: an optimizer's values are run-time hyper-parameters ----------

# Other values of every optimizer field (same state size: SGD keeps its momentum on)
OTHER_VALUES = {
    "sgd": ({"momentum": 0.5}, {"lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adam": ({}, {"lr": 0.02, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.001}),
}


def _with_optimizer(settings: dict) -> dict:
    return {**SPEC, "optimizer": settings}


def test_every_optimizer_field_is_covered_here():
    from cnncc.optimizers import OPTIMIZERS

    assert set(OTHER_VALUES) == set(OPTIMIZERS)
    for kind, (_, other) in OTHER_VALUES.items():
        assert set(other) == set(OPTIMIZERS[kind].fields), kind


@pytest.mark.parametrize("kind", sorted(OTHER_VALUES))
def test_the_c_depends_on_no_optimizer_value(kind):
    """OptimizerKind.compiled_identity's contract: other values of every field, the same C."""
    from cnncc import codegen

    base, other = OTHER_VALUES[kind]
    first = codegen.render(cnncc.check(_with_optimizer({"type": kind, **base})).program)
    second = codegen.render(cnncc.check(_with_optimizer({"type": kind, **other})).program)
    assert (first.header, first.source, first.cdef) == (second.header, second.source, second.cdef)


def test_a_new_learning_rate_loads_the_same_module(tmp_path):
    first = cnncc.compile(_with_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.5}), build_dir=tmp_path,
                          cflags=FLAGS)
    before = cnncc.build.compile_count
    other = {"type": "sgd", "lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    second = cnncc.compile(_with_optimizer(other), build_dir=tmp_path, cflags=FLAGS)
    assert cnncc.build.compile_count == before  # a cache hit: no compile
    assert second.hyper == {k: v for k, v in other.items() if k != "type"}  # the new spec's values, not the cached
    # and they are the ones the step uses: one step of each from the same weights
    y = np.zeros((2, 2))
    first.init(1)
    second.init(1)
    assert np.array_equal(first.flat_params, second.flat_params)
    first.train_step(X, y)
    second.train_step(X, y)
    assert not np.array_equal(first.flat_params, second.flat_params)
    # without momentum SGD keeps no velocity: other C, another build
    cnncc.compile(_with_optimizer({"type": "sgd", "lr": 0.1}), build_dir=tmp_path, cflags=FLAGS)
    assert cnncc.build.compile_count == before + 1

"""Faults: processes killed mid-write, concurrent builds, long runs, and bad calls.

- SIGKILL during `Model.save`, during a checkpoint inside `fit`, and during a compile never
  leaves a partial file or module where a later run would load it; the next run works.
- Four processes building into one fresh cache at once all succeed with identical results.
- Twenty epochs of training (with a checkpoint each) do not grow memory or file handles.
- Bad inputs, labels and targets raise ValueError before any C runs; bad weight files
  raise CheckpointError and leave the model exactly as it was. (tests/test_train.py covers
  truncated, garbage, missing, metadata-less, other-spec, wrong-shape and NaN files and
  labels through `fit`; this file covers the rest.)
"""
from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnncc
import cnncc.build
from cnncc.checkpoint import FORMAT, META_KEY, STATE_KEY, CheckpointError

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("-O1",)
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# 2.1 M parameters and Adam's 4.2 M of state: a save writes ~25 MB, long enough to be hit.
BIG = {"name": "faults_big", "input": {"channels": 1, "length": 4096},
       "layers": [{"type": "flatten"}, {"name": "hidden", "type": "dense", "units": 512, "activation": "relu"},
                  {"name": "out", "type": "dense", "units": 4}],
       "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.001}}

SMALL = {"name": "faults_small", "input": {"channels": 2, "height": 10, "width": 10},
         "layers": [{"name": "conv", "type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
                    {"name": "bn", "type": "batchnorm"},
                    {"name": "pool", "type": "maxpool2d", "kernel": 2},
                    {"type": "flatten"}, {"name": "drop", "type": "dropout", "rate": 0.2},
                    {"name": "out", "type": "dense", "units": 3}],
         "loss": "softmax_cross_entropy", "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}}


def _child(code: str, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def _wait_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the child did not start"
    line = proc.stdout.readline()
    assert line, f"the child exited: {proc.stderr.read()}"
    return line.strip()


def _kill(proc: subprocess.Popen, group: bool = False) -> tuple[str, str]:
    if group:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and the compiler it started
    else:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    return out, err


@pytest.fixture(scope="module")
def big(build_dir):
    """BIG compiled once in the session cache, which the children then load."""
    return cnncc.compile(BIG, build_dir=build_dir, cflags=FLAGS)


# ---- killed while writing ---------------------------------------------------------------
SAVE_CHILD = """
import json, sys
import cnncc
spec, build, flags, path = json.loads(sys.argv[1]), sys.argv[2], tuple(json.loads(sys.argv[3])), sys.argv[4]
model = cnncc.compile(spec, build_dir=build, cflags=flags)
k = 0
while True:  # save k: every parameter, the optimizer state, the step and the epoch are k
    model._params[:] = k
    model._optimizer_state[:] = k
    model.step_count = k
    model.save(path, epoch=k)
    print(k, flush=True)
    k += 1
"""


def test_sigkill_during_save_leaves_the_previous_file_intact(big, build_dir, tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "weights.npz"
    hit_mid_write = 0
    for _ in range(6):
        proc = _child(SAVE_CHILD, json.dumps(BIG), build_dir, json.dumps(FLAGS), path)
        assert _wait_line(proc) == "0"  # a first complete file exists
        time.sleep(rng.uniform(0.02, 0.4))
        out, _ = _kill(proc)
        last = int(([line for line in out.split() if line] or ["0"])[-1])
        temporaries = [p for p in tmp_path.iterdir() if p.name != "weights.npz"]
        hit_mid_write += bool(temporaries)
        assert all(p.name.startswith(".weights.npz.") and p.name.endswith(".tmp") for p in temporaries)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # every member complete, every CRC right
        big.load(path)  # fully validated: a partial file would be refused
        value = big.params["hidden.weight"][0, 0]
        assert value in (last, last + 1)  # the last confirmed save, or one finished just before the kill
        assert all((p == value).all() for p in big.params.values())
        assert (big._optimizer_state == value).all() and big.step_count == value and big.loaded_epoch == value
        for p in temporaries:
            p.unlink()
    assert hit_mid_write, "no kill landed inside a save: the test did not exercise the window"


FIT_CHILD = """
import json, sys
import numpy as np
import cnncc
spec, build, flags, path = json.loads(sys.argv[1]), sys.argv[2], tuple(json.loads(sys.argv[3])), sys.argv[4]
model = cnncc.compile(spec, build_dir=build, cflags=flags).init(0)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(8, 1, 4096)).astype(np.float32), np.arange(8) % 4
model.fit(x, y, epochs=1, batch_size=8, checkpoint=path, verbose=0)
print("ready", flush=True)
model.fit(x, y, epochs=10**6, initial_epoch=1, batch_size=8, checkpoint=path, verbose=1)  # until killed
"""


def test_sigkill_during_a_fit_checkpoint_leaves_a_loadable_checkpoint(big, build_dir, tmp_path):
    rng = np.random.default_rng(8)
    path = tmp_path / "ckpt.npz"
    x, y = np.random.default_rng(0).normal(size=(8, 1, 4096)).astype(np.float32), np.arange(8) % 4
    for _ in range(4):
        proc = _child(FIT_CHILD, json.dumps(BIG), build_dir, json.dumps(FLAGS), path)
        assert _wait_line(proc) == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        _, err = _kill(proc)
        # fit prints an epoch's line before saving its checkpoint: the file holds that epoch or the one before.
        epochs = [int(m.group(1)) for m in re.finditer(r"^epoch (\d+)/\d+ ", err, re.MULTILINE)]
        finished = max(epochs, default=1)
        model = cnncc.compile(BIG, build_dir=build_dir, cflags=FLAGS).load(path)
        assert model.loaded_epoch in (finished - 1, finished) and model.loaded_epoch >= 1
        assert model.step_count == model.loaded_epoch  # one step per epoch: state and weights belong together
        assert np.isfinite(model._params).all() and np.isfinite(model._optimizer_state).all()
        # Resume from it, as `cnncc train --resume` would.
        history = model.fit(x, y, epochs=model.loaded_epoch + 1, initial_epoch=model.loaded_epoch, batch_size=8,
                            checkpoint=path, verbose=0)
        assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
        for p in tmp_path.iterdir():
            if p.name != "ckpt.npz":
                p.unlink()


def _slow_spec(name: str) -> dict:
    """About two seconds of gcc -O1 (measured 2.5 s alone on the 2-core test machine): 8
    convolutions of assorted shapes. Long enough for a kill or a race to land while gcc runs."""
    layers = [{"type": "conv2d", "filters": 4 + i % 5, "kernel": 1 + 2 * (i % 3), "padding": "same",
               "activation": ["relu", "tanh", "sigmoid", "leaky_relu"][i % 4]} for i in range(8)]
    return {"name": name, "input": {"channels": 3, "height": 12, "width": 12},
            "layers": layers + [{"type": "global_avgpool"}, {"type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy"}


COMPILE_CHILD = """
import json, sys
import cnncc
cnncc.compile(json.loads(sys.argv[1]), build_dir=sys.argv[2], cflags=tuple(json.loads(sys.argv[3])))
print("compiled", flush=True)
"""


def test_sigkill_during_a_compile_leaves_no_module_and_the_next_compile_works(tmp_path):
    build = tmp_path / "build"
    spec = _slow_spec("killed_build")
    proc = _child(COMPILE_CHILD, json.dumps(spec), build, json.dumps(FLAGS), start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(build.glob(".killed_build-*/killed_build.c")):  # the staging directory, sources written
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    time.sleep(0.2)  # gcc is running now
    out, _ = _kill(proc, group=True)
    assert "compiled" not in out
    modules = [p for p in build.iterdir() if not p.name.startswith(".")]
    assert modules == [], "a module was installed by a killed build"
    # What is left is the killed build's private directory, which nothing ever loads.
    assert all(p.name.startswith(".killed_build-") for p in build.iterdir())
    before = cnncc.build.compile_count
    model = cnncc.compile(spec, build_dir=build, cflags=FLAGS).init(0)
    assert cnncc.build.compile_count == before + 1 and not model.module.from_cache
    out = model.forward(np.random.default_rng(0).normal(size=(2, 3, 12, 12)))
    assert out.shape == (2, 3) and np.isfinite(out).all()
    again = cnncc.compile(spec, build_dir=build, cflags=FLAGS)
    assert again.module.from_cache and np.array_equal(again.init(0).forward(np.zeros((1, 3, 12, 12))),
                                                      model.forward(np.zeros((1, 3, 12, 12))))
    assert [p for p in build.iterdir() if not p.name.startswith(".")] == [model.module.path.parent]


def test_stale_staging_directories_are_cleaned_by_the_next_build(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    old = time.time() - 2 * cnncc.build.STALE_STAGING_SECONDS
    stale, running, other = build / ".faults_small-dead1234", build / ".faults_small-live5678", build / ".other-dead"
    for directory in (stale, running, other):
        directory.mkdir()
        (directory / "x.c").write_text("int x;")
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    cnncc.compile(SMALL, build_dir=build, cflags=FLAGS)
    assert not stale.exists()  # a killed build of this model, an hour old
    assert running.exists()  # maybe another process building it right now
    assert other.exists()  # another model's: left to that model's next build
    hidden = sorted(p.name for p in build.iterdir() if p.name.startswith("."))
    assert hidden == sorted([other.name, running.name])  # and this build left nothing behind


CONCURRENT_CHILD = """
import hashlib, json, os, sys, time
import numpy as np
import cnncc, cnncc.build
spec, build, flags, go = json.loads(sys.argv[1]), sys.argv[2], tuple(json.loads(sys.argv[3])), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
model = cnncc.compile(spec, build_dir=build, cflags=flags).init(0)
out = model.forward(np.random.default_rng(0).normal(size=(4,) + model.input_shape))
print(json.dumps({"path": str(model.module.path), "compiled": cnncc.build.compile_count,
                  "out": hashlib.sha256(out.tobytes()).hexdigest()}))
"""


@pytest.mark.slow
def test_four_processes_building_into_one_cache(tmp_path):
    build, go = tmp_path / "build", tmp_path / "go"
    specs = {"A": _slow_spec("shared_a"), "B": dict(SMALL, name="shared_b")}
    jobs = ["A", "A", "B", "B"]
    procs = [_child(CONCURRENT_CHILD, json.dumps(specs[job]), build, json.dumps(FLAGS), go) for job in jobs]
    time.sleep(0.5)  # let them all start and wait at the line
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for job in ("A", "B"):
        mine = [r for r, j in zip(results, jobs) if j == job]
        assert mine[0]["path"] == mine[1]["path"] and mine[0]["out"] == mine[1]["out"]
        assert sum(r["compiled"] for r in mine) == 1  # the entry's build lock: one compiles, one waits and loads
    entries = sorted(p.name for p in build.iterdir())
    assert not [name for name in entries if name.startswith(".")], f"staging or lock left behind: {entries}"
    assert len(entries) == 2 and {name.rsplit("-", 1)[0] for name in entries} == {"shared_a", "shared_b"}
    for name in entries:
        stem = name.rsplit("-", 1)[0]
        assert sorted(p.name for p in (build / name).iterdir()) == ["MANIFEST.json", f"{stem}.c", f"{stem}.h",
                                                                    f"{stem}.so", f"{stem}_ffi.py"]
    # The cache the race left behind is used as is, and computes the same thing.
    for job, spec in specs.items():
        model = cnncc.compile(spec, build_dir=build, cflags=FLAGS).init(0)
        assert model.module.from_cache
        out = model.forward(np.random.default_rng(0).normal(size=(4,) + model.input_shape))
        assert hashlib.sha256(out.tobytes()).hexdigest() == results[jobs.index(job)]["out"]


# ---- long runs --------------------------------------------------------------------------
def _rss_bytes() -> int:
    """The resident set now (Linux), or its peak so far elsewhere (which a leak grows too)."""
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _open_files() -> int:
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return len(os.listdir(fd_dir))


def test_twenty_epochs_do_not_grow_memory_or_file_handles(build_dir, tmp_path):
    from cnncc import data

    (x, y), _ = data.synthetic(shape=(2, 10, 10), classes=3, n_train=2000, n_test=10, seed=3)
    model = cnncc.compile(SMALL, build_dir=build_dir, cflags=FLAGS).init(0)
    checkpoint = tmp_path / "ckpt.npz"
    rss, handles = [], []
    for epoch in range(20):
        model.fit(x, y, epochs=epoch + 1, initial_epoch=epoch, batch_size=32, checkpoint=checkpoint, verbose=0)
        model.evaluate(x[:500], y[:500])
        gc.collect()
        rss.append(_rss_bytes())
        handles.append(_open_files())
    growth = rss[-1] - rss[2]
    assert growth < 2 << 20, f"RSS grew {growth:,} bytes from epoch 3 to 20: {rss}"
    assert handles[-1] == handles[0], handles
    assert model.load(checkpoint).loaded_epoch == 20


# ---- bad calls: refused before any C runs -----------------------------------------------
class _Spy:
    """Stands in for the model's C bindings (abi.Bindings) and records every entry point looked up,
    but the input check all_finite, which only reads its arguments (it is part of the validation)."""

    READS_ONLY = {"all_finite"}

    def __init__(self, lib):
        self._lib, self.calls = lib, []

    def __getattr__(self, name):
        if name not in self.READS_ONLY:
            self.calls.append(name)
        return getattr(self._lib, name)


@pytest.fixture()
def spied(build_dir):
    model = cnncc.compile(SMALL, build_dir=build_dir, cflags=FLAGS).init(0)
    model.forward(np.zeros((2, 2, 10, 10)))  # buffers exist: a bad call could scribble on them
    spy = _Spy(model._c)
    model._c = spy
    return model, spy


def _snapshot(model):
    return (model._params.copy(), model._optimizer_state.copy(), model._grads.copy(), model._acts.copy(),
            model.step_count, model._capacity)


def _assert_untouched(model, spy, snapshot):
    assert spy.calls == [], f"C ran: {spy.calls}"
    params, state, grads, acts, step, capacity = snapshot
    assert np.array_equal(model._params, params) and np.array_equal(model._optimizer_state, state)
    assert np.array_equal(model._grads, grads) and np.array_equal(model._acts, acts)
    assert model.step_count == step and model._capacity == capacity


GOOD_X = np.random.default_rng(0).normal(size=(4, 2, 10, 10))
GOOD_Y = np.array([0, 1, 2, 0])

BAD_INPUTS = {
    "no batch axis": GOOD_X[0],
    "missing axis": GOOD_X[:, 0],
    "extra axis": GOOD_X[None],
    "wrong channels": np.zeros((4, 3, 10, 10)),
    "wrong height": np.zeros((4, 2, 11, 10)),
    "transposed": np.zeros((4, 10, 10, 2)),
    "batch of 0": np.zeros((0, 2, 10, 10)),
    "complex64": GOOD_X.astype(np.complex64),
    "complex128 with zero imaginary part": GOOD_X.astype(np.complex128),
    "object": GOOD_X.astype(object),
    "strings": GOOD_X.astype(str),
    "bytes": GOOD_X.astype(bytes),
    "datetime": np.zeros((4, 2, 10, 10), "datetime64[s]"),
    "timedelta": np.zeros((4, 2, 10, 10), "timedelta64[s]"),
    "structured": np.zeros((4, 2, 10, 10), [("a", "f4")]),
    "NaN": np.where(np.arange(800).reshape(4, 2, 10, 10) == 437, np.nan, GOOD_X),
    "inf": np.where(np.arange(800).reshape(4, 2, 10, 10) == 3, np.inf, GOOD_X),
    "-inf": np.where(np.arange(800).reshape(4, 2, 10, 10) == 799, -np.inf, GOOD_X),
    "float16 inf": np.full((4, 2, 10, 10), np.inf, np.float16),
    "float64 past float32": np.full((4, 2, 10, 10), 1e39),
    "a list of strings": [["x"] * 10] * 4,
    "None": None,
}

BAD_LABELS = {
    "float": GOOD_Y.astype(np.float64),
    "bool": GOOD_Y.astype(bool),
    "complex": GOOD_Y.astype(np.complex64),
    "strings": GOOD_Y.astype(str),
    "object": GOOD_Y.astype(object),
    "2-D": GOOD_Y[:, None],
    "one short": GOOD_Y[:3],
    "one long": np.append(GOOD_Y, 0),
    "scalar": np.int64(1),
    "equal to the class count": np.array([0, 1, 3, 0]),
    "negative": np.array([0, -1, 2, 0]),
    "2**32 (0 if wrapped to int32)": np.array([0, 1, 2, 1 << 32]),
    "2**31 (negative in int32)": np.array([0, 1, 2, 1 << 31]),
    "uint64 max": np.array([0, 1, 2, np.iinfo(np.uint64).max], np.uint64),
    "int8 -128": np.array([0, 1, 2, -128], np.int8),
}


def _calls(model, x, y):
    return {"forward": lambda: model.forward(x), "predict": lambda: model.predict(x, batch_size=2),
            "loss": lambda: model.loss(x, y), "gradients": lambda: model.gradients(x, y),
            "train_step": lambda: model.train_step(x, y), "evaluate": lambda: model.evaluate(x, y),
            "fit": lambda: model.fit(x, y, epochs=1, verbose=0)}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_refused_before_any_c_runs(spied, case):
    model, spy = spied
    snapshot = _snapshot(model)
    for name, call in _calls(model, BAD_INPUTS[case], GOOD_Y).items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"{name} accepted {case}")
    _assert_untouched(model, spy, snapshot)


@pytest.mark.parametrize("case", BAD_LABELS)
def test_bad_labels_are_refused_before_any_c_runs(spied, case):
    model, spy = spied
    snapshot = _snapshot(model)
    for name, call in _calls(model, GOOD_X, BAD_LABELS[case]).items():
        if name in ("forward", "predict"):
            continue
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"{name} accepted labels {case}")
    _assert_untouched(model, spy, snapshot)


def test_good_calls_do_reach_c(spied):
    """The control for the two tests above: the spy sees real calls."""
    model, spy = spied
    model.train_step(GOOD_X, GOOD_Y)
    assert spy.calls and model.step_count == 1


BAD_HYPER = {  # SMALL's sgd: lr, momentum, nesterov, weight_decay
    "NaN lr": {"lr": float("nan")},
    "inf lr": {"lr": float("inf")},
    "negative lr (ascends)": {"lr": -1.0},
    "lr that is 0 in float32": {"lr": 1e-50},
    "lr that is infinite in float32": {"lr": 1e39},
    "string lr": {"lr": "0.1"},
    "bool lr": {"lr": True},
    "momentum past 1": {"momentum": 1.5},
    "NaN weight decay": {"weight_decay": float("nan")},
    "unknown key": {"beta1": 0.9},
}


@pytest.mark.parametrize("case", BAD_HYPER)
def test_bad_hyper_parameters_are_refused_before_any_c_runs(spied, case):
    model, spy = spied
    before = dict(model.hyper)
    model.hyper.update(BAD_HYPER[case])
    snapshot = _snapshot(model)
    # fit sets lr itself each epoch (from its lr argument or schedule), so it checks the others
    for name in ("train_step",) if "lr" in BAD_HYPER[case] else ("train_step", "fit"):
        with pytest.raises(ValueError, match="model.hyper: "):
            _calls(model, GOOD_X, GOOD_Y)[name]()
            pytest.fail(f"{name} accepted {case}")
    with pytest.raises(ValueError, match="model.hyper: "):
        model.apply_step()
    _assert_untouched(model, spy, snapshot)
    model.hyper.clear()
    model.hyper.update(before)


def test_a_missing_hyper_parameter_is_named(spied):
    model, spy = spied
    del model.hyper["momentum"]
    with pytest.raises(ValueError, match="'momentum' is missing"):
        model.train_step(GOOD_X, GOOD_Y)
    assert spy.calls == []


@pytest.mark.parametrize("lr", [1e-50, 1e39])
def test_fit_refuses_an_lr_its_dtype_cannot_hold(spied, lr):
    model, spy = spied
    with pytest.raises(ValueError, match=re.escape(f"lr = {lr:g} is ") + ".* in float32"):
        model.fit(GOOD_X, GOOD_Y, epochs=1, verbose=0, lr=lr)
    assert spy.calls == []


def test_an_lr_of_0_is_allowed_and_changes_nothing(spied):
    # a schedule may reach 0 (cosine decay at its end): a step then leaves the weights as they are
    model, _ = spied
    model.hyper.update(lr=0.0, weight_decay=0.0)
    trainable = [key for key in model.params if not key.endswith(("running_mean", "running_var"))]
    start = {key: model.params[key].copy() for key in trainable}
    model.train_step(GOOD_X, GOOD_Y)
    for key in trainable:
        assert np.array_equal(model.params[key], start[key]), key


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_bad_float_targets_are_refused_before_any_c_runs(build_dir, loss):
    spec = dict(SMALL, name=f"faults_{loss[:3]}", loss=loss,
                layers=SMALL["layers"][:-1] + [{"name": "out", "type": "dense", "units": 3, "activation": "sigmoid"}])
    model = cnncc.compile(spec, build_dir=build_dir, cflags=FLAGS).init(0)
    model.forward(GOOD_X)
    spy = _Spy(model._c)
    model._c = spy
    snapshot = _snapshot(model)
    good = np.full((4, 3), 0.5)
    bad = {"labels instead of targets": GOOD_Y, "wrong shape": good[:, :2], "one short": good[:3],
           "NaN": np.where(np.eye(4, 3) > 0, np.nan, good), "inf": np.where(np.eye(4, 3) > 0, np.inf, good),
           "complex": good.astype(np.complex128), "strings": good.astype(str), "object": good.astype(object)}
    if loss == "binary_cross_entropy":
        bad.update({"above 1": good + 0.6, "below 0": good - 0.6})
    for case, targets in bad.items():
        for name, call in _calls(model, GOOD_X, targets).items():
            if name in ("forward", "predict"):
                continue
            with pytest.raises(ValueError):
                call()
                pytest.fail(f"{name} accepted targets {case}")
    _assert_untouched(model, spy, snapshot)
    model.train_step(GOOD_X, good)
    assert spy.calls


# ---- bad weight files: refused, model unchanged -----------------------------------------
@pytest.fixture()
def saved(build_dir, tmp_path):
    model = cnncc.compile(SMALL, build_dir=build_dir, cflags=FLAGS).init(0)
    model.fit(GOOD_X, GOOD_Y, epochs=2, verbose=0)
    path = tmp_path / "good.npz"
    model.save(path, epoch=2)
    other = cnncc.compile(SMALL, build_dir=build_dir, cflags=FLAGS).init(5)  # the model files are loaded into
    other.fit(GOOD_X, GOOD_Y, epochs=1, verbose=0)
    other.loaded_epoch = "sentinel"
    return other, path, dict(np.load(path))


def _write(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def _meta(arrays: dict) -> dict:
    return json.loads(arrays[META_KEY].tobytes())


def _with_meta(arrays: dict, **changes) -> dict:
    meta = {**_meta(arrays), **changes}
    return {**arrays, META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}


def _rejects(model, path, match):
    before = (model._params.copy(), model._optimizer_state.copy(), model.step_count, model.loaded_epoch)
    with pytest.raises(CheckpointError, match=match):
        model.load(path)
    params, state, step, epoch = before
    assert np.array_equal(model._params, params) and np.array_equal(model._optimizer_state, state)
    assert model.step_count == step and model.loaded_epoch == epoch


def test_weight_files_with_bad_values_or_types_are_refused(saved, tmp_path):
    model, good, arrays = saved
    weight = arrays["conv.weight"]
    cases = {
        "inf": ({**arrays, "conv.weight": np.where(weight == weight.flat[0], np.inf, weight)}, "infinite"),
        "-inf": ({**arrays, "out.bias": np.full(3, -np.inf, np.float32)}, "infinite"),
        "integer weights": ({**arrays, "conv.weight": weight.astype(np.int32)}, "expected floats"),
        "complex weights": ({**arrays, "conv.weight": weight.astype(np.complex64)}, "expected floats"),
        "boolean weights": ({**arrays, "conv.weight": weight > 0}, "expected floats"),
        "transposed weights": ({**arrays, "conv.weight": weight.T.copy()}, "expected floats of shape"),
        "scalar bias": ({**arrays, "out.bias": np.float32(0)}, "out.bias"),
        "NaN in the optimizer state": ({**arrays, STATE_KEY: np.full_like(arrays[STATE_KEY], np.nan)}, "optimizer"),
        "unknown format": (_with_meta(arrays, format="cnncc-weights-0"), "unknown format"),
        "other fingerprint": (_with_meta(arrays, fingerprint="0" * 16), "differs"),
        "metadata not a mapping": ({**arrays, META_KEY: np.frombuffer(b"[1, 2]", np.uint8)}, "unknown format"),
        "metadata not JSON": ({**arrays, META_KEY: np.frombuffer(b"\xff{", np.uint8)}, "corrupt metadata"),
    }
    for case, (changed, match) in cases.items():
        _rejects(model, _write(tmp_path / f"{case}.npz", changed), match)


def test_damaged_weight_files_are_refused(saved, tmp_path):
    model, good, arrays = saved
    raw = good.read_bytes()
    (tmp_path / "empty.npz").write_bytes(b"")
    _rejects(model, tmp_path / "empty.npz", "corrupt or truncated")
    _rejects(model, tmp_path, "corrupt or truncated|no such|directory")  # a directory, not a file
    for fraction in np.linspace(0.05, 0.99, 12):  # cut anywhere
        cut = tmp_path / f"cut{fraction:.2f}.npz"
        cut.write_bytes(raw[: int(len(raw) * fraction)])
        _rejects(model, cut, "corrupt or truncated")
    with zipfile.ZipFile(good) as archive:  # one flipped bit inside the stored weights
        info = archive.getinfo("conv.weight.npy")
    local = raw[info.header_offset:info.header_offset + 30]  # the local header: name and extra lengths
    data = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    flipped = bytearray(raw)
    flipped[data + info.file_size - 16] ^= 0x10  # in the last weights, past the .npy header
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    _rejects(model, tmp_path / "flipped.npz", "corrupt or truncated")
    # A pickled object array is never unpickled.
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Marker(str(marker))], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["conv.weight.npy"] = buffer.getvalue()
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    _rejects(model, pickled, "corrupt or truncated")
    assert not marker.exists()
    model.load(good)  # and the good file still loads after all that
    assert model.loaded_epoch == 2


class _Marker:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_weight_file_declaring_a_huge_array_is_refused_cleanly(saved, tmp_path):
    model, good, arrays = saved
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
    members["conv.weight.npy"] = header.getvalue() + b"\0" * 64
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    _rejects(model, path, "conv.weight")


def test_a_float64_file_loads_into_a_float32_model(saved, tmp_path):
    """Another float precision is accepted (converted); the values survive the round trip."""
    model, good, arrays = saved
    wide = {key: (value.astype(np.float64) if key not in (META_KEY,) else value) for key, value in arrays.items()}
    model.load(_write(tmp_path / "wide.npz", wide))
    assert np.array_equal(model.params["conv.weight"], arrays["conv.weight"])
    assert _meta(arrays)["format"] == FORMAT

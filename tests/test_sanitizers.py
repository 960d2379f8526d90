"""Every example spec's generated C, and a zoo of specs covering every layer option, run
under AddressSanitizer and UndefinedBehaviorSanitizer: inference, loss, gradients and
optimizer steps at batch sizes 1, 7 and 33 (within a work budget: see sanitize_run.py).

The shared library is loaded into Python through cffi, so the ASan runtime must come first:
each spec runs in a child process with LD_PRELOAD=libasan.so (and leak detection off, since
CPython itself leaks by design). -fno-sanitize-recover=all turns any report into an abort.
Specs run two at a time. Skipped only where the compiler has no libasan.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cnncc.build import BuildError, find_compiler

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "sanitize_run.py"
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
# Multiply-accumulates per spec: every spec trains at every batch size but the three biggest,
# which at batch 33 run the forward pass only. Their training step at 33 was 75-85% of their
# sanitized work (half the fixture's run time), on the kernels their batch-7 step already runs;
# the batch-wide products' tails past 32 samples train in the seven other specs at batch 33.
BUDGET = 2.2e10
FORWARD_ONLY_AT_LARGEST = {"vgg_cifar", "resnet8", "three_conv"}


def _libasan() -> str | None:
    try:
        compiler = find_compiler()
    except BuildError:
        return None
    result = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = result.stdout.strip()
    return path if result.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


LIBASAN = _libasan()
pytestmark = [pytest.mark.skipif(LIBASAN is None, reason="the C compiler has no libasan"), pytest.mark.slow]

# Every layer kind and option the example specs leave out: branches off the network input,
# add and concat of one tensor twice, grouped, dilated, strided and 'same' convolutions,
# padded pools whose window outgrows the input, softmax inside the network, batchnorm and
# dropout on images and flat vectors, both other losses, float64, sgd with Nesterov, and an
# inference-only network ending in a view.
ZOO = {
    "zoo_image": {
        "name": "zoo_image", "input": {"channels": 3, "height": 9, "width": 11},
        "layers": [
            {"name": "in_sum", "type": "add", "inputs": ["input", "input"]},
            {"name": "in_cat", "type": "concat", "inputs": ["input", "in_sum"]},
            {"name": "c1", "type": "conv2d", "filters": 6, "kernel": [3, 2], "stride": [2, 1], "padding": "same",
             "dilation": [1, 2], "groups": 3, "activation": "leaky_relu"},
            {"name": "bn1", "type": "batchnorm"},
            {"name": "dw", "type": "conv2d", "filters": 6, "kernel": 3, "padding": 1, "groups": 6, "bias": False,
             "activation": "tanh"},
            {"name": "sum", "type": "add", "inputs": ["bn1", "dw", "dw"]},
            {"name": "cat", "type": "concat", "inputs": ["sum", "bn1", "sum"]},
            {"name": "sm", "type": "softmax"},
            {"name": "mp", "type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
            {"name": "ap", "type": "avgpool2d", "kernel": [3, 2], "stride": 1, "padding": [1, 0], "inputs": ["cat"]},
            {"name": "drop", "type": "dropout", "rate": 0.3},
            # a Winograd forward (3x3, stride 1, 18 channels in, 17 out): an odd height, a relu epilogue
            {"name": "wg", "type": "conv2d", "filters": 17, "kernel": 3, "padding": "same", "activation": "relu"},
            {"name": "c2", "type": "conv2d", "filters": 4, "kernel": 1, "activation": "sigmoid"},
            {"name": "gap", "type": "global_avgpool"},
            {"name": "fc", "type": "dense", "units": 5, "activation": "relu"},
            {"name": "bnf", "type": "batchnorm"},
            {"name": "dropf", "type": "dropout", "rate": 0.5},
            {"name": "out", "type": "dense", "units": 3, "activation": "tanh"}],
        "loss": "mse",
        "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}},
    # a Winograd F(4x4, 3x3) forward (32 channels in and out, 16 tiles of 4x4: an odd height and
    # width, so the last tiles' pixels are dropped) and its weight gradient's F(2x2) regions
    "zoo_winograd4": {
        "name": "zoo_winograd4", "input": {"channels": 32, "height": 13, "width": 15},
        "layers": [
            {"name": "wg4", "type": "conv2d", "filters": 33, "kernel": 3, "padding": 1, "activation": "relu"},
            {"name": "gap", "type": "global_avgpool"},
            {"name": "out", "type": "dense", "units": 3}],
        "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}},
    "zoo_signal": {
        "name": "zoo_signal", "dtype": "float64", "input": {"channels": 2, "length": 37},
        "layers": [
            {"name": "c1", "type": "conv1d", "filters": 4, "kernel": 5, "stride": 2, "padding": 3, "dilation": 2,
             "activation": "relu"},
            {"name": "mp", "type": "maxpool1d", "kernel": 3, "stride": 2, "padding": 1},
            {"name": "ap", "type": "avgpool1d", "kernel": 2, "padding": 1},
            {"name": "bn", "type": "batchnorm", "momentum": 0.5},
            # depthwise, ending with its relu (the op's epilogue: its backward's masked scratch)
            {"name": "c2", "type": "conv1d", "filters": 4, "kernel": 3, "padding": "same", "groups": 4,
             "activation": "relu"},
            {"name": "res", "type": "add", "inputs": ["bn", "c2"]},
            {"type": "flatten"},
            {"name": "drop", "type": "dropout", "rate": 0.2},
            {"name": "out", "type": "dense", "units": 3, "activation": "sigmoid"}],
        "loss": "binary_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01, "weight_decay": 0.001}},
    "zoo_infer": {
        "name": "zoo_infer", "input": {"channels": 2, "height": 5, "width": 5},
        "layers": [
            {"name": "a", "type": "avgpool2d", "kernel": 5, "padding": 2, "stride": 3},
            {"name": "m", "type": "maxpool2d", "kernel": [1, 5], "padding": [0, 2], "stride": [2, 3],
             "inputs": ["input"]},
            {"name": "bn", "type": "batchnorm", "inputs": ["input"]},
            {"name": "s", "type": "softmax", "inputs": ["input"]},
            {"name": "j", "type": "concat", "inputs": ["bn", "s"]},
            {"type": "flatten"}]},
}

# Found by this file; reported. The model's size macros (A_NUM_TRAINABLE for a model named
# 'a') and the tensor macros (A_<LAYER>) share a namespace, so a layer named 'num_trainable'
# redefines the size the optimizer loops over: a heap overflow in the step.
COLLISION = {
    "name": "a", "input": {"channels": 1, "height": 32, "width": 32},
    "layers": [{"name": "c", "type": "conv2d", "filters": 8, "kernel": 3},
               {"name": "num_trainable", "type": "relu"},
               {"type": "global_avgpool"}, {"name": "out", "type": "dense", "units": 2}],
    "loss": "softmax_cross_entropy", "optimizer": {"type": "adam"}}

CASES = [*(path.stem for path in SPECS), *ZOO]
# Also built with threads=2: lenet5's convs both go through their pools (one with an input
# gradient), resnet_small's keep the backward at every pixel (batchnorm, branches, depthwise).
THREADED = ("lenet5", "resnet_small")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, once_per_session):
    """Every case run once in the session, two at a time: {case: its exit status and output}."""
    results = once_per_session("sanitizer-runs", lambda: _run_every_case(tmp_path_factory))
    return {name: SimpleNamespace(**result) for name, result in results.items()}


def _run_every_case(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("sanitize")
    build = work / "build"
    jobs = {path.stem: [str(path)] + (["--forward-only-at", "33"] if path.stem in FORWARD_ONLY_AT_LARGEST else [])
            for path in SPECS}
    for name, spec in {**ZOO, "collision": COLLISION}.items():
        (work / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        jobs[name] = [str(work / f"{name}.yaml")]
    jobs["canary"] = [str(work / "zoo_signal.yaml"), "--canary"]
    for name in THREADED:  # OpenMP builds: sample slots on 2 threads
        jobs[f"{name}_threads"] = [str(ROOT / "specs" / f"{name}.yaml"), "--threads", "2"]
    env = {**os.environ, "LD_PRELOAD": LIBASAN, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1", "PYTHONPATH": str(ROOT)}

    def run(args):
        spec, *rest = args
        return subprocess.run([sys.executable, str(RUNNER), spec, str(build), "--budget", str(BUDGET), *rest],
                              capture_output=True, text=True, env=env, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        # The expensive specs first, so the two workers finish together.
        order = sorted(jobs, key=lambda name: name not in ("vgg_cifar", "resnet8", "three_conv", "ds_cnn"))
        futures = {name: pool.submit(run, jobs[name]) for name in order}
        return {name: {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
                for name, done in ((name, future.result()) for name, future in futures.items())}


def _clean(result) -> None:
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
    assert "ERROR: AddressSanitizer" not in result.stderr, report
    assert "runtime error:" not in result.stderr, report
    assert result.returncode == 0, report
    assert result.stdout.splitlines()[-1] == "ok", report


@pytest.mark.parametrize("case", CASES)
def test_generated_c_is_clean_under_asan_and_ubsan(runs, case):
    result = runs[case]
    _clean(result)
    assert "batch 1: forward" in result.stdout


@pytest.mark.parametrize("name", THREADED)
def test_threaded_builds_are_clean_under_asan_and_ubsan(runs, name):
    result = runs[f"{name}_threads"]
    _clean(result)
    assert "batch 33: forward" in result.stdout


def test_every_spec_ran_at_every_batch_size(runs):
    """Every spec in specs/ and the zoo (batchnorm, dropout, every option): forward, gradients and
    optimizer steps (for those with a loss) at batch 1, an odd one and a large one (VGG's
    forward alone at the large one)."""
    for case in CASES:
        lines = runs[case].stdout
        trains = "gradients" in lines.split("batch 1:")[1].splitlines()[0]
        assert trains or case == "zoo_infer", (case, lines)
        for batch in (1, 7, 33):
            ran = lines.split(f"batch {batch}:")[1].splitlines()[0] if f"batch {batch}:" in lines else ""
            trained = "gradients," in ran or not trains or (batch == 33 and case in FORWARD_ONLY_AT_LARGEST)
            assert ran.startswith(" forward") and trained, (case, batch, lines)


def test_the_sanitizers_are_live(runs):
    """A deliberate overflow is caught: the preload and the flags really instrument the code."""
    result = runs["canary"]
    assert result.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in result.stderr
    assert "zoo_signal_forward" in result.stderr or "zoo_signal.c" in result.stderr


def test_layer_names_cannot_redefine_the_models_macros(runs):
    _clean(runs["collision"])

"""The measurement tools: the per-op profiler and its C entry points, `cnncc bench`, and the
side-by-side harness in benchmarks/. No assertion on speed beyond "positive": these check
that the figures measure what they say."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc import bench
from cnncc.check import check_net
from cnncc.cli import main as cli_main
from cnncc.codegen import render
from cnncc.lowering import lower
from cnncc.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "specs" / "lenet5.yaml")
RESNET = str(ROOT / "specs" / "resnet_small.yaml")  # branches, batchnorm, dropout, a depthwise conv

INFERENCE_ONLY = {
    "name": "tiny_inference",
    "input": {"channels": 2, "height": 9, "width": 9},
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"name": "bn", "type": "batchnorm"},
        {"name": "pool", "type": "avgpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3},
    ],
}


def _compile(spec, build_dir):
    return cnncc.compile(spec, build_dir=build_dir).init(0)


@pytest.mark.parametrize("spec", [LENET, RESNET, INFERENCE_ONLY], ids=["lenet5", "resnet_small", "inference_only"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_forward_op_in_order_is_forward(spec, training, build_dir):
    model = _compile(spec, build_dir)
    x, _ = bench.random_batch(model, 3, seed=2)
    native = model.bind(x)
    params = model.flat_params.copy()
    native.forward(seed=7, training=training)
    acts = model.flat_activations(3)
    expected_acts, expected_params = acts.copy(), model.flat_params.copy()
    acts[...] = np.nan  # nothing may survive from the full pass
    model.flat_params[...] = params  # batchnorm's running statistics, as they were before it
    assert getattr(model.module.lib, f"{model.program.name.upper()}_NUM_OPS") == len(model.program.ops)
    for i in range(len(model.program.ops)):
        native.forward_op(i, seed=7, training=training)
    native.forward_op(len(model.program.ops), seed=7, training=training)  # out of range: nothing
    np.testing.assert_array_equal(model.flat_activations(3), expected_acts)
    np.testing.assert_array_equal(model.flat_params, expected_params)
    if not training:
        np.testing.assert_array_equal(model.last_output(3).copy(), model.forward(x))


@pytest.mark.parametrize("spec", [LENET, RESNET], ids=["lenet5", "resnet_small"])
def test_backward_op_in_reverse_is_backward(spec, build_dir):
    model = _compile(spec, build_dir)
    native = bench._bind(model, 4, seed=5)
    native.full_pass(seed=5)
    grad_acts_buffer = model.flat_activations(4, grad=True)
    grads, grad_acts = model.flat_grads.copy(), grad_acts_buffer.copy()
    logits = model.program.loss.logits
    start, stop = logits.offset * 4, (logits.offset + logits.size) * 4
    loss_grad = grad_acts_buffer[start:stop].copy()
    bench.zero_activation_gradients(model, 4)  # not the argmax lenet5's pools keep for its convs
    grad_acts_buffer[start:stop] = loss_grad
    model.flat_grads[...] = 0
    for i in reversed(range(len(model.program.ops))):
        native.backward_op(i, seed=5)
    np.testing.assert_array_equal(model.flat_grads, grads)
    np.testing.assert_array_equal(model.flat_activations(4, grad=True), grad_acts)


def test_profile_covers_every_op_and_adds_up_to_a_step(build_dir):
    model = _compile(LENET, build_dir)
    params = model.flat_params.copy()
    ratios = []
    for _ in range(3):  # the machine may be shared: a noisy attempt gets another chance
        rows = bench.profile_layers(model, batch=16, repeats=3)
        passes = bench.time_passes(model, batch=16, repeats=3)
        assert [r.name for r in rows] == [op.name for op in model.program.ops]
        assert [r.index for r in rows] == list(range(len(rows)))
        absorbed = model.program.absorbed_backward  # the pools conv1 and conv2's backwards go through
        assert set(absorbed) == {"pool1", "pool2"}
        # every relu is its conv's or dense's epilogue
        assert [r.kind for r in rows] == ["conv2d+relu", "maxpool2d"] * 2 + ["dense+relu"] * 2 + ["dense"]
        assert all(r.forward_s > 0 and (r.backward_s is None) == (r.name in absorbed) for r in rows)
        assert all(r.backward_s > 0 for r in rows if r.name not in absorbed)
        assert all(v > 0 for v in passes.values())
        main_ops = [r for r in rows if r.kind.split("+")[0] in ("conv2d", "dense")]
        assert main_ops and all(r.macs > 0 and r.gflops > 0 for r in main_ops)
        assert sum(r.macs for r in rows) == cnncc.check(LENET).totals["macs"]
        ratios.append(sum(r.total_s for r in rows) / (passes["train_step"] - passes["step"]))
        if 0.5 <= ratios[-1] <= 2.0:
            break
    assert 0.5 <= ratios[-1] <= 2.0, ratios
    np.testing.assert_array_equal(model.flat_params, params)  # profiling leaves the model as it was


def test_profile_of_an_inference_only_spec(build_dir):
    model = _compile(INFERENCE_ONLY, build_dir)
    rows = bench.profile_layers(model, batch=2, repeats=2)
    assert [r.name for r in rows] == [op.name for op in model.program.ops]
    assert all(r.forward_s > 0 and r.backward_s is None for r in rows)
    assert set(bench.time_passes(model, batch=2, repeats=2)) == {"forward"}


def test_train_throughput_leaves_the_model_unchanged(build_dir):
    model = _compile(LENET, build_dir)
    params = model.flat_params.copy()
    result = bench.train_throughput(model, batch=8, repeats=2, repeat_seconds=0.0, warmup_seconds=0.0)
    assert result.per_second > 0 and len(result.repeats) == 2 and result.calls == 1
    np.testing.assert_array_equal(model.flat_params, params)
    assert model.step_count == 0


@pytest.mark.parametrize("spec", [{**INFERENCE_ONLY, "name": "tiny_c"}, LENET], ids=["no_loss", "lenet5"])
def test_profiling_entry_points_compile_warning_free(spec, tmp_path):
    s = load_spec(spec)
    sources = render(lower(check_net(s)), s.path)
    (tmp_path / f"{s.name}.c").write_text(sources.source)
    (tmp_path / f"{s.name}.h").write_text(sources.header)
    assert f"{s.name}_forward_op" in sources.cdef
    assert (f"{s.name}_backward_op" in sources.cdef) == (s.loss is not None)
    result = subprocess.run(["cc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c",
                             str(tmp_path / f"{s.name}.c"), "-o", str(tmp_path / "model.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_bench_layers(build_dir, capsys):
    assert cli_main(["bench", LENET, "--layers", "--batch", "4", "--repeats", "1", "--build-dir", str(build_dir)]) == 0
    text = capsys.readouterr().out
    model = _compile(LENET, build_dir)
    for op in model.program.ops:
        assert f" {op.name} " in text
    assert "forward ms" in text and "backward ms" in text and "% of total" in text and "GFLOP/s" in text
    assert "% of peak" in text and "multiply-add throughput on 1 thread(s)" in text

    assert cli_main(["bench", LENET, "--layers", "--batch", "4", "--repeats", "1", "--json",
                     "--build-dir", str(build_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [op["name"] for op in report["ops"]] == [op.name for op in model.program.ops]
    assert sum(op["percent"] for op in report["ops"]) == pytest.approx(100.0)
    assert report["peak_gflops"] > 0
    for op in report["ops"]:  # the fraction of the machine's peak each op reaches, from its own rate
        assert op["percent_of_peak"] == pytest.approx(100 * op["gflops"] / report["peak_gflops"])


def test_peak_is_a_positive_rate_and_refuses_bad_arguments(build_dir):
    from cnncc.peak import peak_gflops

    assert 0 < peak_gflops(1, seconds=0.02, runs=1, build_dir=build_dir) < 1e5  # GFLOP/s of one core
    for bad in ({"threads": 0}, {"threads": 1.5}, {"seconds": 0}, {"seconds": float("nan")}, {"runs": 0}):
        with pytest.raises(ValueError):
            peak_gflops(**{"threads": 1, "seconds": 0.02, "runs": 1, **bad}, build_dir=build_dir)


def test_cli_bench_summary(build_dir, capsys):
    assert cli_main(["bench", LENET, "--batch", "4", "--repeats", "1", "--json", "--build-dir", str(build_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train"]["images_per_s"] > 0 and report["train"]["gflops"] > 0
    assert report["latency_batch1"]["median_us"] > 0
    assert cli_main(["bench", LENET, "--batch", "4", "--repeats", "1", "--build-dir", str(build_dir)]) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "batch-1 inference latency" in text


@pytest.mark.slow
def test_harness_quick_json_end_to_end():
    # the smallest default spec: every column is the same code for every spec, and each spec
    # costs its cold compiles on both backends and a PyTorch run
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json",
                             "--specs", "mnist_seed"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    has_torch = importlib.util.find_spec("torch") is not None
    assert report["torch"] == has_torch
    assert [s["spec"] for s in report["specs"]] == ["mnist_seed"]
    assert report["peak_gflops"]["1"] > 0
    for spec in report["specs"]:
        train = spec["train"][0]
        assert train["threads"] == 1 and train["cnncc"]["images_per_s"] > 0 and train["cnncc"]["rss_mb"] > 0
        assert spec["latency"][0]["cnncc"]["median_us"] > 0
        if report["onnxruntime"]:  # installed (CI installs it): the batch-1 column
            assert spec["latency"][0]["onnxruntime"]["median_us"] > 0 and spec["latency"][0]["ort_speedup"] > 0
        assert train["portable"]["images_per_s"] > 0 and train["portable_ratio"] > 0  # the portable backend
        assert spec["latency"][0]["portable"]["median_us"] > 0 and spec["latency"][0]["portable_slowdown"] > 0
        assert spec["compile"]["cold_median_s"] > 0 and spec["compile"]["cached"][0]["from_cache"]
        if has_torch:
            assert spec["check"]["ok"], spec["check"]
            assert train["torch"]["images_per_s"] > 0 and train["ratio"] > 0
            assert spec["latency"][0]["speedup"] > 0
        else:
            assert "torch" not in train and train["ratio"] is None
    assert {t["target"].split()[0] for t in report["targets"]} == {"mnist_seed"}
    import platform

    isa = report["machine"]["isa"]
    assert isa in ("avx512", "avx2", "avx") if platform.machine() == "x86_64" else isa == platform.machine()


CIFAR_AUGMENTED = {
    "name": "cifar_augmented",
    "input": {"channels": 3, "height": 32, "width": 32},
    "layers": [{"name": "conv", "type": "conv2d", "filters": 8, "kernel": 3, "padding": 1, "activation": "relu"},
               {"name": "pool", "type": "maxpool2d", "kernel": 4}, {"type": "flatten"},
               {"name": "out", "type": "dense", "units": 10}],
    "loss": "softmax_cross_entropy",
    "training": {"batch_size": 12, "augment": {"crop": 4, "flip": True}},
}


def test_cli_bench_times_the_augmentation_at_the_spec_batch(build_dir, tmp_path, capsys):
    import yaml

    spec = tmp_path / "cifar_augmented.yaml"
    spec.write_text(yaml.safe_dump(CIFAR_AUGMENTED))
    assert cli_main(["bench", str(spec), "--repeats", "1", "--json", "--build-dir", str(build_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 12  # --batch defaults to the spec's training.batch_size
    augment = report["augment"]
    assert augment["settings"]["crop"] == 4 and augment["ms_per_batch"] > 0
    assert augment["percent_of_step"] == pytest.approx(100 * augment["ms_per_batch"] / report["train"]["ms_per_step"])
    assert cli_main(["bench", str(spec), "--batch", "5", "--repeats", "1", "--build-dir", str(build_dir)]) == 0
    text = capsys.readouterr().out
    assert "at batch 5" in text and "augmentation (crop: 4, flip: True)" in text and "% of the training step" in text

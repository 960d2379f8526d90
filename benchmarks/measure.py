"""One measurement, run by bench.py in a fresh child process.

    python benchmarks/measure.py '{"task": "train", "framework": "torch", "spec": ..., ...}'

prints one JSON line. A fresh process per figure keeps the thread settings (set in the
environment by the parent before Python starts, and with torch.set_num_threads) and the
peak RSS (`ru_maxrss` at the end) clean. Tasks: check (torch vs cnncc on the same
weights), train (images/s), latency (batch-1 inference from Python: cnncc, torch or
onnxruntime), emitted (batch-1
latency of `cnncc emit --inference-only` C, no Python), compile (cnncc.compile wall time).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def _relative(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-30)
    return float(np.abs(a - b).max()) / scale if b.size else 0.0


def task_check(t: dict) -> dict:
    """Same weights, same batch: torch's forward (inference), loss and gradients (training
    mode) against cnncc's, relative to each tensor's largest magnitude."""
    torch = _torch(t["threads"])
    import cnncc
    import cnncc.torch
    import torch_models as tm
    from cnncc.bench import random_batch
    from cnncc.gradcheck import redundant_biases

    report = cnncc.check(t["spec"])
    model = cnncc.compile(t["spec"], build_dir=t["build_dir"], threads=t.get("threads", 1))
    model.init(0)
    net = cnncc.torch.to_module(model)  # the same weights
    x, y = random_batch(model, t["batch"], seed=1)
    xt = torch.from_numpy(x)
    net.eval()
    with torch.no_grad():
        forward = _relative(model.forward(x), net(xt).numpy())
    out = {"batch": t["batch"], "forward_rel": forward}
    if report.spec.loss is None:
        return out
    if any(layer.spec.kind == "dropout" for layer in report.net.layers):
        out["training"] = "skipped: the dropout masks of the two differ"
        return out
    loss_c, grads_c = model.gradients(x, y)
    net.train()
    net.zero_grad()
    loss_t = tm.loss(report.spec)(net(xt), tm.targets(y, report.spec))
    loss_t.backward()
    tensors, names = dict(net.named_parameters()), cnncc.torch.parameter_names(model)
    loss_t = loss_t.item()
    out["loss_rel"] = abs(loss_c - loss_t) / max(abs(loss_t), 1e-30)
    # a bias feeding only a batchnorm has an exact gradient of 0: both sides hold rounding noise
    # there, and its "relative" difference means nothing (cnncc.gradcheck.redundant_biases)
    skipped = {f"{layer}.bias" for layer in redundant_biases(report.spec)}
    out["grad_rel"] = max(_relative(g, tensors[names[k]].grad.numpy()) for k, g in grads_c.items()
                          if k not in skipped)
    out["zero_gradient_biases_skipped"] = sorted(skipped)
    return out


def task_train(t: dict) -> dict:
    from cnncc.bench import random_batch, timed_repeats, train_throughput

    batch, repeats = t["batch"], t["repeats"]
    if t["framework"] == "cnncc":
        import cnncc

        model = cnncc.compile(t["spec"], build_dir=t["build_dir"], threads=t.get("threads", 1),
                              backend=t.get("backend", "vector"))
        model.init(0)
        result = train_throughput(model, batch, repeats, t["repeat_seconds"], t["warmup_seconds"])
    else:
        torch = _torch(t["threads"])
        import cnncc
        import torch_models as tm

        report = cnncc.check(t["spec"])
        net = tm.build(report)
        net.train()
        optimizer, criterion = tm.optimizer(net, report.spec), tm.loss(report.spec)
        x, y = random_batch(report.program, batch, seed=0)
        xt, yt = torch.from_numpy(x), tm.targets(y, report.spec)

        def step():
            optimizer.zero_grad()
            loss = criterion(net(xt), yt)
            loss.backward()
            optimizer.step()

        result = timed_repeats(step, batch, repeats, t["repeat_seconds"], t["warmup_seconds"])
    return {"images_per_s": result.per_second, "repeats": list(result.repeats), "steps_per_repeat": result.calls,
            "ms_per_step": 1e3 * result.seconds_per_call}


def task_latency(t: dict) -> dict:
    from cnncc.bench import call_latency, inference_latency, random_batch

    if t["framework"] == "cnncc":
        import cnncc

        model = cnncc.compile(t["spec"], build_dir=t["build_dir"], threads=t.get("threads", 1),
                              backend=t.get("backend", "vector"))
        model.init(0)
        result = inference_latency(model, t["seconds"], min_calls=t["min_calls"], warmup_calls=t["warmup_calls"])
    elif t["framework"] == "onnxruntime":
        # the same network and weights, exported by cnncc (cnncc/onnx), run by onnxruntime's CPU
        # provider with its default graph optimisations (which fold batchnorm and fuse activations)
        # and t["threads"] intra-op threads
        import onnxruntime as ort

        import cnncc
        import cnncc.onnx

        model = cnncc.compile(t["spec"], build_dir=t["build_dir"]).init(0)
        path = Path(tempfile.mkdtemp(dir=t["build_dir"])) / f"{model.spec.name}.onnx"
        cnncc.onnx.export(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = t["threads"], 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x, _ = random_batch(model.program, 1, seed=0)
        feed = {"input": x}
        result = call_latency(lambda: session.run(None, feed), t["seconds"], t["min_calls"],
                              warmup_calls=t["warmup_calls"])
    else:
        torch = _torch(t["threads"])
        import cnncc
        import torch_models as tm

        report = cnncc.check(t["spec"])
        net = tm.build(report)
        net.eval()
        x, _ = random_batch(report.program, 1, seed=0)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            result = call_latency(lambda: net(xt), t["seconds"], t["min_calls"], warmup_calls=t["warmup_calls"])
    return {"median_us": result.median_us, "p10_us": result.p10_us, "p90_us": result.p90_us, "calls": result.calls}


def task_emitted(t: dict) -> dict:
    """`cnncc emit --inference-only --batch 1 --host` (planned for this host's memory, as the
    Python module is), compiled with the Python module's flags and latency_main.c, run as its own
    program."""
    from cnncc.build import DEFAULT_CFLAGS, find_compiler
    from cnncc.emit import emit

    work = Path(tempfile.mkdtemp(prefix="cnncc-emit-", dir=t["build_dir"]))
    emitted = emit(t["spec"], work, inference_only=True, batch=1, for_device=False)
    program = emitted.program
    name = program.name
    binary = work / "latency"
    command = [find_compiler(), "-std=c99", *DEFAULT_CFLAGS, "-I", str(work), f"-DMODEL={name}",
               f"-DMODEL_UPPER={name.upper()}", f'-DMODEL_HEADER="{name}.h"', f"-DREAL={program.c_type}",
               str(HERE / "latency_main.c"), str(work / f"{name}.c"), "-lm", "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"compiling the emitted C failed: {built.stderr[-2000:]}")
    ran = subprocess.run([str(binary), str(t["seconds"]), str(t["min_calls"])], capture_output=True, text=True,
                         timeout=600)
    if ran.returncode != 0:
        raise RuntimeError(f"the latency program failed: {ran.stderr[-2000:]}")
    words = ran.stdout.split()
    values = dict(zip(words[::2], words[1::2]))
    return {"median_us": float(values["median_us"]), "p10_us": float(values["p10_us"]),
            "p90_us": float(values["p90_us"]), "calls": int(values["calls"]), "flags": command[1:2 + len(DEFAULT_CFLAGS)]}


def task_compile(t: dict) -> dict:
    # A Python user of cnncc has numpy loaded already (numpy in, numpy out): its import (about 50 ms)
    # is not the compiler's time, so it happens before the clock starts.
    import numpy  # noqa: F401

    start = time.perf_counter()
    import cnncc

    imported = time.perf_counter()
    model = cnncc.compile(t["spec"], build_dir=t["build_dir"], threads=t.get("threads", 1))
    compiled = time.perf_counter()
    cnncc.compile(t["spec"], build_dir=t["build_dir"], threads=t.get("threads", 1))  # again, in this process: the warm cache path
    again = time.perf_counter()
    return {"import_s": imported - start, "compile_s": compiled - imported, "from_cache": model.module.from_cache,
            "same_process_s": again - compiled}


TASKS = {"check": task_check, "train": task_train, "latency": task_latency, "emitted": task_emitted,
         "compile": task_compile}


def main() -> int:
    task = json.loads(sys.argv[1])
    os.environ.setdefault("OMP_NUM_THREADS", str(task.get("threads", 1)))
    result = TASKS[task["task"]](task)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

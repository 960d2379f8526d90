"""cnncc against PyTorch, side by side: training images/s, batch-1 latency, compile time,
peak memory, GFLOP/s and the share of a measured machine peak.

    python benchmarks/bench.py                      # all three specs, 1 and 2 threads
    python benchmarks/bench.py --specs lenet5 --threads 1 --json
    python benchmarks/bench.py --quick              # a smoke run (tiny batch, one step a repeat)

Every figure comes from its own child process (measure.py) with OMP_NUM_THREADS and
friends set before Python starts (and torch.set_num_threads), so thread settings and the
peak RSS are clean; figures are medians of repeats. PyTorch is optional: without it the
torch columns say n/a. Before timing a spec, torch's forward, loss and gradients on
cnncc's weights are compared with cnncc's (the comparison must be like for like).
The portable backend (strict ISO C99, one thread) is timed beside the default vector backend at
one thread, and so is the int8 model (issue 19: quantized with a random calibration set, timed as
QuantizedModel.predict at batch 1, quantize and dequantize included; its ratio to float is printed
after the tables; a spec the int8 path refuses says why). FLOPs per image = 2 * (forward + backward
MACs) from `cnncc.check(spec).totals`, the same count for both frameworks. The peak is
cnncc/peak.py's FMA throughput (templates/peak.c.j2), built now.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import tables  # noqa: E402  (benchmarks/tables.py)

# issue 14's six: the paper network, LeNet, the VGG block, resnet_small, ResNet-8, DS-CNN
DEFAULT_SPECS = ("mnist_seed", "lenet5", "vgg_cifar", "resnet_small", "resnet8", "ds_cnn")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
CHECK_BATCH = 8
FORWARD_TOLERANCE = 1e-4  # relative to the output's largest magnitude
GRADIENT_TOLERANCE = 1e-3  # float32 sums over a batch in another order
CHILD_TIMEOUT = 3600
PORTABLE = "portable"  # the backend timed beside the default one (cnncc/backends/portable)
INT8_CALIBRATION = 64  # random samples calibrating the int8 model whose latency is timed


class Settings:
    def __init__(self, args):
        quick = args.quick
        self.quick = quick
        self.batch = args.batch or (4 if quick else 64)
        self.repeats = args.repeats or (2 if quick else 5)
        self.repeat_seconds = 0.0 if quick else args.repeat_seconds  # 0: one step per repeat
        self.warmup_seconds = 0.0 if quick else 0.3
        self.latency_seconds = 0.02 if quick else 1.0
        self.latency_calls = (2, 5) if quick else (10, 20)  # warm-up calls, least timed calls
        self.compile_repeats = 1 if quick else 3
        self.peak_seconds, self.peak_runs = (0.1, 1) if quick else (0.5, 5)
        self.threads = [int(t) for t in (args.threads or ("1" if quick else "1,2")).split(",")]

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def spec_path(name: str) -> str:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return str(path)
    return str(ROOT / "specs" / f"{name}.yaml")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(task: dict, threads: int = 1, runner: tuple[str, ...] | None = None) -> dict:
    """Run one measurement in a fresh process (measure.py, or `runner` given the task as its last
    argument); {"error": ...} if it fails."""
    task = {**task, "threads": threads}
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    try:
        result = subprocess.run([sys.executable, *(runner or (str(HERE / "measure.py"),)), json.dumps(task)],
                                env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1][-500:]
        return {"error": f"exit status {result.returncode}: {last}"}
    return json.loads(lines[-1])


# the int8 latency's child: this module's int8_latency in a fresh process, like measure.py's tasks
INT8_RUNNER = ("-c", "import json, sys; sys.path.insert(0, sys.argv[1]); import bench; "
                     "print(json.dumps(bench.int8_latency(json.loads(sys.argv[2]))))", str(HERE))


def int8_latency(t: dict) -> dict:
    """Batch-1 latency of the spec's int8 model (run in a child): the float model with init(0) weights,
    quantized on INT8_CALIBRATION random samples, QuantizedModel.predict timed as the float latency is
    (cnncc.bench.inference_latency's protocol and input). {"skipped": why} for a spec int8 refuses."""
    import numpy as np

    import cnncc
    from cnncc.bench import call_latency, random_batch
    from cnncc.quantize import QuantizeError

    model = cnncc.compile(t["spec"], build_dir=t["build_dir"]).init(0)
    shape = (INT8_CALIBRATION,) + tuple(model.input_shape)
    calibration = np.random.default_rng(1).standard_normal(shape).astype(model.program.dtype)
    try:
        qmodel = model.quantize(calibration, build_dir=t["build_dir"])
    except QuantizeError as exc:
        return {"skipped": f"the int8 path refuses this spec: {exc}"}
    x, _ = random_batch(model, 1, seed=0)
    result = call_latency(lambda: qmodel.predict(x), t["seconds"], t["min_calls"], warmup_calls=t["warmup_calls"])
    return {"median_us": result.median_us, "p10_us": result.p10_us, "p90_us": result.p90_us, "calls": result.calls,
            "arena_bytes": qmodel.layout.arena_bytes}


def int8_table(results: list[dict]) -> str:
    """The int8 batch-1 latency beside float's (vector backend, one thread)."""
    lines = ["", "  int8 batch-1 latency (QuantizedModel.predict, 1 thread) against float32 (vector backend), "
                 "median us:"]
    for spec in results:
        for row in spec["latency"]:
            if "int8" not in row:
                continue
            figure, ratio = row["int8"], row.get("int8_ratio")
            if "median_us" in figure:
                text = f"{figure['median_us']:.1f} us" + (f", {ratio:.2f}x float's" if ratio else "")
            else:
                text = figure.get("skipped") or figure.get("error", "n/a")
            lines.append(f"    {spec['spec']:16s} {text}")
    return "\n".join(lines)


def measure_peak(work: Path, settings: Settings) -> dict:
    """The machine's FMA throughput (cnncc/peak.py, built with cnncc's default flags, -march=native)
    at each thread count: the best of a few runs."""
    from cnncc.options import DEFAULT_CFLAGS
    from cnncc.peak import peak_gflops

    # the flags named from the one list the build uses: a copy here went stale when it changed
    peak = {"source": f"templates/peak.c.j2 via cnncc.peak.peak_gflops (cc {' '.join(DEFAULT_CFLAGS)})"}
    for threads in settings.threads:
        peak[str(threads)] = peak_gflops(threads, settings.peak_seconds, settings.peak_runs, build_dir=work)
    return peak


def vector_isa() -> str:
    """The widest vector ISA the kernels use here (-march=native: templates/gemm.c.j2's choice)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        flags = []
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "avx" if "avx" in flags else \
        (platform.machine() or "unknown")


def machine_info() -> dict:
    from cnncc.build import compiler_identity, find_compiler

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        compiler = compiler_identity(find_compiler()).splitlines()[0]
    except Exception as exc:  # noqa: BLE001  (informational only)
        compiler = f"unknown ({exc})"
    versions = {}
    for package in ("numpy", "cffi", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "isa": vector_isa(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "compiler": compiler,
            "python": platform.python_version(), **versions,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def bench_spec(name: str, settings: Settings, build_dir: Path, use_torch: bool, use_emit: bool,
               use_ort: bool = False) -> dict:
    import cnncc

    path = spec_path(name)
    report = cnncc.check(path)
    totals = report.totals
    trains = report.spec.loss is not None
    out = {"spec": report.spec.name, "path": path, "macs": totals["macs"], "backward_macs": totals["backward_macs"],
           "flop_per_image": 2 * (totals["macs"] + (totals["backward_macs"] if trains else 0)),
           "optimizer": report.spec.optimizer.type, "loss": report.spec.loss}
    common = {"spec": path, "build_dir": str(build_dir)}
    if use_torch:
        log(f"  {out['spec']}: cross-check against torch")
        check = child({**common, "task": "check", "batch": CHECK_BATCH})
        failures = []
        if "error" not in check:
            if check["forward_rel"] > FORWARD_TOLERANCE:
                failures.append(f"forward differs by {check['forward_rel']:.2e} > {FORWARD_TOLERANCE:g}")
            if check.get("grad_rel", 0.0) > GRADIENT_TOLERANCE or check.get("loss_rel", 0.0) > FORWARD_TOLERANCE:
                failures.append(f"loss/gradients differ by {check.get('loss_rel'):.2e}/{check.get('grad_rel'):.2e}")
        else:
            failures.append(check["error"])
        check["ok"] = not failures
        check["failures"] = failures
        out["check"] = check
        use_torch = check["ok"]  # no side-by-side figures unless the two compute the same thing
    out["train"] = []
    if trains:
        for threads in settings.threads:
            row = {"threads": threads}
            for framework in ("cnncc", "torch") if use_torch else ("cnncc",):
                log(f"  {out['spec']}: training, {framework}, {threads} thread(s)")
                row[framework] = child({**common, "task": "train", "framework": framework, "batch": settings.batch,
                                        "repeats": settings.repeats, "repeat_seconds": settings.repeat_seconds,
                                        "warmup_seconds": settings.warmup_seconds}, threads)
            if threads == 1:
                log(f"  {out['spec']}: training, cnncc portable backend, 1 thread")
                row["portable"] = child({**common, "task": "train", "framework": "cnncc", "backend": PORTABLE,
                                         "batch": settings.batch, "repeats": settings.repeats,
                                         "repeat_seconds": settings.repeat_seconds,
                                         "warmup_seconds": settings.warmup_seconds}, threads)
            out["train"].append(row)
    out["latency"] = []
    for threads in settings.threads:
        row = {"threads": threads}
        for framework in ("cnncc", "torch") if use_torch else ("cnncc",):
            log(f"  {out['spec']}: batch-1 latency, {framework}, {threads} thread(s)")
            row[framework] = child({**common, "task": "latency", "framework": framework,
                                    "seconds": settings.latency_seconds, "warmup_calls": settings.latency_calls[0],
                                    "min_calls": settings.latency_calls[1]}, threads)
        if use_ort:
            log(f"  {out['spec']}: batch-1 latency, onnxruntime, {threads} thread(s)")
            row["onnxruntime"] = child({**common, "task": "latency", "framework": "onnxruntime",
                                        "seconds": settings.latency_seconds,
                                        "warmup_calls": settings.latency_calls[0],
                                        "min_calls": settings.latency_calls[1]}, threads)
        if threads == 1:
            log(f"  {out['spec']}: batch-1 latency, cnncc portable backend, 1 thread")
            row["portable"] = child({**common, "task": "latency", "framework": "cnncc", "backend": PORTABLE,
                                     "seconds": settings.latency_seconds, "warmup_calls": settings.latency_calls[0],
                                     "min_calls": settings.latency_calls[1]}, threads)
        if threads == 1:
            log(f"  {out['spec']}: batch-1 latency, int8, 1 thread")
            row["int8"] = child({**common, "seconds": settings.latency_seconds,
                                 "warmup_calls": settings.latency_calls[0], "min_calls": settings.latency_calls[1]},
                                threads, INT8_RUNNER)
        if use_emit and threads == settings.threads[0]:
            log(f"  {out['spec']}: batch-1 latency, emitted C")
            row["emitted_c"] = child({**common, "task": "emitted", "seconds": settings.latency_seconds,
                                      "min_calls": settings.latency_calls[1]}, threads)
        out["latency"].append(row)
    log(f"  {out['spec']}: compile time")
    cold, cached = [], []
    for _ in range(settings.compile_repeats):
        fresh = Path(tempfile.mkdtemp(prefix="cold-", dir=build_dir))
        cold.append(child({"task": "compile", "spec": path, "build_dir": str(fresh)}))
        cached.append(child({"task": "compile", "spec": path, "build_dir": str(fresh)}))
    out["compile"] = {"cold": cold, "cached": cached}
    return out


def summarise(results: list[dict]) -> None:
    """Derived figures, in place: ratios, GFLOP/s, medians of the compile runs."""
    for spec in results:
        for row in spec["train"]:
            for framework in ("cnncc", "torch"):
                figure = row.get(framework)
                if figure and "images_per_s" in figure:
                    figure["gflops"] = figure["images_per_s"] * spec["flop_per_image"] / 1e9
            c, t = row.get("cnncc", {}), row.get("torch", {})
            row["ratio"] = (c["images_per_s"] / t["images_per_s"]
                            if "images_per_s" in c and "images_per_s" in t else None)
            p = row.get("portable") or {}
            row["portable_ratio"] = (p["images_per_s"] / c["images_per_s"]
                                     if "images_per_s" in p and "images_per_s" in c else None)
        for row in spec["latency"]:
            c, t = row.get("cnncc", {}), row.get("torch", {})
            row["speedup"] = t["median_us"] / c["median_us"] if "median_us" in c and "median_us" in t else None
            o = row.get("onnxruntime") or {}
            row["ort_speedup"] = o["median_us"] / c["median_us"] if "median_us" in c and "median_us" in o else None
            e = row.get("emitted_c") or {}
            row["ort_speedup_emitted"] = (o["median_us"] / e["median_us"]
                                          if "median_us" in e and "median_us" in o else None)
            p = row.get("portable") or {}
            row["portable_slowdown"] = p["median_us"] / c["median_us"] if "median_us" in p and "median_us" in c else None
            q = row.get("int8") or {}
            if "int8" in row:  # int8 / float32 (vector backend): below 1 meets issue 19's target
                row["int8_ratio"] = q["median_us"] / c["median_us"] if "median_us" in q and "median_us" in c else None
        compile_ = spec["compile"]
        for kind in ("cold", "cached"):
            times = [run["compile_s"] for run in compile_[kind] if "compile_s" in run]
            compile_[f"{kind}_median_s"] = statistics.median(times) if times else None
        same = [run["same_process_s"] for run in compile_["cached"] if "same_process_s" in run]
        imports = [run["import_s"] for run in compile_["cached"] if "import_s" in run]
        compile_["same_process_median_s"] = statistics.median(same) if same else None
        compile_["import_median_s"] = statistics.median(imports) if imports else None


def errors_in(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["error"]] if "error" in value else []
        return found + [e for v in value.values() for e in errors_in(v)]
    if isinstance(value, list):
        return [e for v in value for e in errors_in(v)]
    return []


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="cnncc vs PyTorch, side by side (see the module docstring).")
    parser.add_argument("--specs", default=",".join(DEFAULT_SPECS),
                        help="comma-separated spec names (specs/NAME.yaml) or paths (default: %(default)s)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2; --quick: 1)")
    parser.add_argument("--batch", type=int, default=None, help="training batch size (default 64; --quick: 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, medians reported (default 5)")
    parser.add_argument("--repeat-seconds", type=float, default=0.75, help="length of one repeat (default 0.75 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batch, one step per repeat")
    parser.add_argument("--no-torch", action="store_true", help="cnncc columns only, even if torch is installed")
    parser.add_argument("--no-ort", action="store_true", help="no onnxruntime column, even if it is installed")
    parser.add_argument("--results", action="store_true",
                        help="also write benchmarks/results/<date>-<HHMM>-<isa>.json and .txt (the README's source)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if (args.batch is not None and args.batch < 1) or (args.repeats is not None and args.repeats < 1):
        parser.error("--batch and --repeats must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = Settings(args)
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    use_emit = importlib.util.find_spec("cnncc.emit") is not None
    use_ort = not args.no_ort and all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="cnncc-bench-"))
    try:
        log(f"cnncc bench: machine peak ({', '.join(map(str, settings.threads))} thread(s))")
        result = {"command": " ".join(["python", "benchmarks/bench.py"] + (sys.argv[1:] if argv is None else argv)),
                  "date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
                  "settings": settings.as_dict(), "torch": use_torch, "emitted_c": use_emit, "onnxruntime": use_ort,
                  "peak_gflops": measure_peak(work, settings), "specs": []}
        clock = time.perf_counter()
        for name in args.specs.split(","):
            log(f"cnncc bench: {name}")
            result["specs"].append(bench_spec(name.strip(), settings, work / "build", use_torch, use_emit, use_ort))
        summarise(result["specs"])
        result["seconds"] = time.perf_counter() - clock
        result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        result["targets"] = tables.targets(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.results:
        # the minute too: a second run on the same day (or on another machine) must not overwrite the first
        stem = HERE / "results" / f"{started.strftime('%Y-%m-%d-%H%M')}-{result['machine']['isa']}"
        stem.parent.mkdir(exist_ok=True)
        stem.with_suffix(".json").write_text(text + "\n")
        stem.with_suffix(".txt").write_text(tables.render(result) + int8_table(result["specs"]) + "\n")
        log(f"cnncc bench: wrote {stem}.json and .txt")
    print(text if args.json else tables.render(result) + int8_table(result["specs"]))
    failures = list(dict.fromkeys(errors_in(result["specs"]) + [
        f for spec in result["specs"] for f in spec.get("check", {}).get("failures", [])]))
    for failure in failures:
        log(f"cnncc bench: error: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

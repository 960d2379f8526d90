"""Measuring a compiled model: training throughput, batch-1 latency and a per-op profile.

`cnncc bench SPEC` prints the training images/s at a batch size and the batch-1 inference
latency; `--layers` times every op of the schedule on its own, forward and backward,
through the generated `NAME_forward_op` / `NAME_backward_op` entry points, so it is
clear where a training step's time goes. The timing protocol (`timed_repeats`: warm up,
calibrate the calls per repeat, report the median repeat) is the one the side-by-side
harness in `benchmarks/` uses for cnncc and PyTorch alike.

Nothing here uses numpy's BLAS: the data is random numbers and every FLOP is in the C.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .backends.vector.conv2d import WINOGRAD
from .layers import format_shape
from .peak import peak_gflops

WARMUP_SECONDS = 0.3
REPEAT_SECONDS = 0.75  # each timed repeat runs about this long (at least one call)
LATENCY_SECONDS = 1.0  # batch-1 latency: calls timed one by one for about this long


@dataclass(frozen=True)
class Throughput:
    per_second: float  # median over the repeats of items per second
    repeats: tuple[float, ...]  # items per second of each repeat
    calls: int  # calls per repeat
    seconds_per_call: float  # median


@dataclass(frozen=True)
class Latency:
    median_us: float
    p10_us: float
    p90_us: float
    calls: int


@dataclass(frozen=True)
class OpTiming:
    """One op of the schedule: median seconds per call at `batch`, and its MACs per sample."""
    index: int
    name: str
    kind: str
    layer: str
    output_shape: tuple[int, ...]
    forward_s: float
    backward_s: float | None  # None: no backward (inference-only spec, or absorbed into another op's)
    macs: int
    backward_macs: int
    batch: int

    @property
    def total_s(self) -> float:
        return self.forward_s + (self.backward_s or 0.0)

    @property
    def gflops(self) -> float:
        """FLOP/s of forward + backward (2 FLOPs per MAC) over their time; 0 for ops without MACs."""
        macs = self.macs + (self.backward_macs if self.backward_s is not None else 0)
        return 2.0 * self.batch * macs / self.total_s / 1e9 if self.total_s > 0 else 0.0


def timed_repeats(call: Callable[[], object], items_per_call: int, repeats: int = 5,
                  repeat_seconds: float = REPEAT_SECONDS, warmup_seconds: float = WARMUP_SECONDS,
                  reset: Callable[[], object] | None = None) -> Throughput:
    """Warm up (at least one call), choose the calls per repeat so a repeat takes about
    repeat_seconds, then time `repeats` repeats; `reset` runs untimed before each one."""
    start, warm = time.perf_counter(), 0
    while True:
        call()
        warm += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup_seconds:
            break
    calls = max(1, round(repeat_seconds / (elapsed / warm)))
    rates, seconds = [], []
    for _ in range(repeats):
        if reset is not None:
            reset()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - start
        rates.append(items_per_call * calls / elapsed)
        seconds.append(elapsed / calls)
    return Throughput(statistics.median(rates), tuple(rates), calls, statistics.median(seconds))


def call_latency(call: Callable[[], object], seconds: float = LATENCY_SECONDS, min_calls: int = 20,
                 max_calls: int = 100_000, warmup_calls: int = 10) -> Latency:
    """Each call timed on its own (after a few warm-up calls): median and 10th/90th percentiles."""
    start = time.perf_counter()
    for _ in range(max(1, warmup_calls)):
        call()
    per_call = (time.perf_counter() - start) / max(1, warmup_calls)
    calls = int(min(max_calls, max(min_calls, seconds / max(per_call, 1e-9))))
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return Latency(1e6 * statistics.median(samples), 1e6 * samples[len(samples) // 10],
                   1e6 * samples[(9 * len(samples)) // 10], calls)


def random_batch(model, batch: int, seed: int = 0):
    """Random inputs [batch, *input_shape] and targets for the loss (None without one), for
    a Model or a Program (the PyTorch side of the harness draws the same data)."""
    program = getattr(model, "program", model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + tuple(program.input.shape)).astype(program.dtype)
    loss = program.loss
    if loss is None:
        return x, None
    y = loss.rules.random_targets(rng, batch, program.output.shape, loss.classes)
    return x, (y if loss.takes_labels else y.astype(program.dtype))


def train_throughput(model, batch: int = 64, repeats: int = 5, repeat_seconds: float = REPEAT_SECONDS,
                     warmup_seconds: float = WARMUP_SECONDS, seed: int = 0) -> Throughput:
    """Training images/s (Model.train_step: forward, loss, backward, optimizer) on a fixed
    random batch. The weights are put back before each repeat and at the end, so every
    repeat does the same work and the model is unchanged."""
    if model.program.loss is None:
        raise ValueError(f"spec '{model.spec.name}' has no loss: there is no training step to time")
    x, y = random_batch(model, batch, seed)
    state = model.state()
    losses = []

    def step():
        losses.append(model.train_step(x, y, checked=True))

    try:
        result = timed_repeats(step, batch, repeats, repeat_seconds, warmup_seconds,
                               reset=lambda: model.restore(state))
    finally:
        model.restore(state)
    if not all(np.isfinite(losses)):
        raise RuntimeError("the loss became non-finite while timing: the C step skipped work, so the "
                           "figure would be wrong")
    return result


def inference_throughput(model, batch: int = 64, repeats: int = 5, repeat_seconds: float = REPEAT_SECONDS,
                         warmup_seconds: float = WARMUP_SECONDS, seed: int = 0) -> Throughput:
    """Inference images/s (Model.forward) at a batch size."""
    x, _ = random_batch(model, batch, seed)
    return timed_repeats(lambda: model.forward(x), batch, repeats, repeat_seconds, warmup_seconds)


def inference_latency(model, seconds: float = LATENCY_SECONDS, seed: int = 0, min_calls: int = 20,
                      warmup_calls: int = 10) -> Latency:
    """Batch-1 inference latency from Python (Model.predict, input checks included)."""
    x, _ = random_batch(model, 1, seed)
    return call_latency(lambda: model.predict(x), seconds, min_calls, warmup_calls=warmup_calls)


def _bind(model, batch: int, seed: int):
    """A fixed random batch bound to the model's C passes (with targets when it can train)."""
    x, y = random_batch(model, batch, seed)
    return model.bind(x, y if model.program.loss is not None else None)


def _op_macs(model) -> dict[str, tuple[int, int]]:
    """op name -> (forward, backward) MACs per sample: a layer's MACs belong to its main op."""
    rows = {row.name: row for row in model.report.rows}
    main = {}  # layer -> its first op (an `activation:` field's op follows it)
    for op in model.program.ops:
        main.setdefault(op.layer, op.name)
    macs = {}
    for op in model.program.ops:
        row = rows.get(op.layer)
        macs[op.name] = (row.macs, row.backward_macs) if row is not None and main[op.layer] == op.name else (0, 0)
    return macs


def zero_activation_gradients(model, batch: int) -> None:
    """What NAME_backward zeroes first (ir.Program.zeroed_gradients): every activation gradient but
    the unmaterialised ones, whose memory holds what a pool's forward keeps for a conv's backward,
    and the initialised ones, which their first writer overwrites."""
    grads = model.flat_activations(batch, grad=True)
    for offset, size in model.program.zeroed_gradients():
        grads[offset * batch:(offset + size) * batch] = 0


def profile_layers(model, batch: int = 64, repeats: int = 5, seed: int = 0) -> list[OpTiming]:
    """Median seconds per call of every op's forward and backward at `batch`, each op run on
    its own from Python on a fixed random batch (training mode when the spec has a loss).
    One full pass first makes every buffer valid; before each backward sweep the activation
    gradients are reset to the loss gradient alone, so each op sees what it sees inside
    NAME_backward. The model's parameters and optimizer state are unchanged afterwards."""
    if batch < 1 or repeats < 1:
        raise ValueError("batch and repeats must be positive")
    program = model.program
    native = _bind(model, batch, seed)
    state = model.state()  # batchnorm's running statistics change in training mode
    ops = program.ops
    forward_s = [[] for _ in ops]
    backward_s = [[] for _ in ops]
    try:
        native.full_pass(seed)
        if native.training:
            logits = program.loss.logits
            start, end = logits.offset * batch, (logits.offset + logits.size) * batch
            loss_grad = model.flat_activations(batch, grad=True)[start:end].copy()
        for _ in range(repeats):
            for i in range(len(ops)):
                t0 = time.perf_counter()
                native.forward_op(i, seed)
                forward_s[i].append(time.perf_counter() - t0)
            if not native.training:
                continue
            zero_activation_gradients(model, batch)
            model.flat_activations(batch, grad=True)[start:end] = loss_grad
            native.zero_grad()
            for i in reversed(range(len(ops))):
                if not program.has_backward(ops[i]):
                    continue
                t0 = time.perf_counter()
                native.backward_op(i, seed)
                backward_s[i].append(time.perf_counter() - t0)
    finally:
        model.restore(state)
    macs = _op_macs(model)
    # an op that computes an add or a relu too (ir.Op.fused) shows as kind+add, kind+relu
    return [OpTiming(i, op.name, op.label, op.layer, tuple(op.output.shape),
                     statistics.median(forward_s[i]),
                     statistics.median(backward_s[i]) if backward_s[i] else None, *macs[op.name], batch)
            for i, op in enumerate(ops)]


def time_passes(model, batch: int = 64, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Median seconds of the whole-model C calls at `batch`: forward, and with a loss also
    loss, backward (zeroing the activation gradients, the loss gradient and every op),
    the optimizer step and the whole train_step. The model is unchanged afterwards."""
    native = _bind(model, batch, seed)
    state = model.state()
    names = ["forward"] + (["loss", "backward", "step", "train_step"] if native.training else [])
    samples = {name: [] for name in names}

    def timed(name, call, *args):
        t0 = time.perf_counter()
        result = call(*args)
        samples[name].append(time.perf_counter() - t0)
        return result

    step_count = model.step_count + 1
    try:
        native.full_pass(seed)
        for _ in range(repeats):
            timed("forward", native.forward, seed)
            if not native.training:
                continue
            timed("loss", native.loss)
            native.zero_grad()
            timed("backward", native.backward, seed)
            timed("step", native.step, step_count)
            model.restore(state)
            timed("train_step", native.train_step, step_count, seed)
            model.restore(state)
    finally:
        model.restore(state)
    return {name: statistics.median(values) for name, values in samples.items()}


# ---- the command ------------------------------------------------------------------------

def _profile_text(model, rows: list[OpTiming], passes: dict[str, float], repeats: int, peak: float) -> str:
    """The per-op table; `peak` is the machine's FMA throughput in GFLOP/s at the model's threads."""
    batch = rows[0].batch if rows else 0
    mode = "training mode" if model.program.loss else "inference mode"
    total = sum(r.total_s for r in rows) or 1.0
    header = ["#", "op", "kind", "output", "forward ms", "backward ms", "% of total", "MACs/image", "GFLOP/s",
              "% of peak"]
    absorbed = model.program.absorbed_backward if model.program.loss else {}

    def backward_cell(r):
        if r.backward_s is not None:
            return f"{1e3 * r.backward_s:.3f}"
        return f"in {absorbed[r.name]}" if r.name in absorbed else "-"

    body = [[str(r.index), r.name, r.kind, format_shape(r.output_shape), f"{1e3 * r.forward_s:.3f}",
             backward_cell(r), f"{100 * r.total_s / total:.1f}%",
             f"{r.macs:,}" if r.macs else "-", f"{r.gflops:.2f}" if r.macs else "-",
             f"{100 * r.gflops / peak:.0f}%" if r.macs else "-"] for r in rows]
    fwd = sum(r.forward_s for r in rows)
    bwd = sum(r.backward_s or 0.0 for r in rows)
    body.append(["", "all ops", "", "", f"{1e3 * fwd:.3f}", f"{1e3 * bwd:.3f}" if model.program.loss else "-",
                 "100.0%", "", "", ""])
    widths = [max(len(row[c]) for row in [header] + body) for c in range(len(header))]
    right = {0, 4, 5, 6, 7, 8, 9}

    def fmt(row):
        return "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                         for c, (cell, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    lines = [f"{model.spec.name}: per-op profile at batch {batch}, {mode}, {model.program.dtype} "
             f"(median of {repeats} repeats, ms per call)", rule, fmt(header), rule]
    lines += [fmt(row) for row in body[:-1]] + [rule, fmt(body[-1])]
    measured = [f"forward {1e3 * passes['forward']:.3f}"]
    if "backward" in passes:
        measured += [f"loss {1e3 * passes['loss']:.3f}",
                     f"backward {1e3 * passes['backward']:.3f} (with zeroing the activation gradients)",
                     f"optimizer step {1e3 * passes['step']:.3f}", f"train_step {1e3 * passes['train_step']:.3f}"]
    lines.append("whole-model calls, ms: " + ", ".join(measured))
    lines.append(f"% of peak: against {peak:.1f} GFLOP/s, this machine's float32 multiply-add throughput on "
                 f"{model.analysis.options.threads} thread(s) with the model's compiler flags (cnncc/peak.py)")
    pooled = [op.name for op in model.program.ops if op.pooled and model.program.loss]
    if pooled:
        lines.append(f"GFLOP/s counts every layer's full MACs, backward too; the backward of {', '.join(pooled)} "
                     "visits only each pool window's maximum (a quarter of the pixels behind a 2x2 pool)")
    winograd = [op.name for op in model.program.ops if op.plan.forward_template == WINOGRAD]
    if winograd:
        training = model.program.loss
        din = [op.name for op in model.program.ops if op.plan.settings.get("winograd_din") and training]
        dweight = [op.name for op in model.program.ops if op.plan.settings.get("winograd_dweight") and training]
        f4 = [op.name for op in model.program.ops if op.plan.settings.get("winograd_tile") == 4]
        lines.append(f"the forward of {', '.join(winograd)}" + (f", the input gradient of {', '.join(din)}" if din else "")
                     + (f", the weight gradient of {', '.join(dweight)}" if dweight else "")
                     + " go by Winograd F(2x2, 3x3), 16 multiply-adds per 2x2 output tile for the direct conv's 36"
                     + (f" (the forward of {', '.join(f4)} by F(4x4, 3x3): 36 per 4x4 tile for 144)" if f4 else "")
                     + ": GFLOP/s counts the direct conv's MACs (an effective rate, which may pass the peak)")
    return "\n".join(lines)


def augment_throughput(model, augment, batch: int = 64, repeats: int = 5, repeat_seconds: float = REPEAT_SECONDS,
                       warmup_seconds: float = WARMUP_SECONDS, seed: int = 0) -> Throughput:
    """Images/s of the augmentation fit applies to each training batch (numpy, in place)."""
    x, _ = random_batch(model, batch, seed)
    steps = iter(range(1 << 62))
    return timed_repeats(lambda: augment.apply(x, seed, next(steps)), batch, repeats, repeat_seconds,
                         warmup_seconds)


def _summary(model, batch: int, repeats: int) -> dict:
    totals = model.report.totals
    out = {"spec": model.spec.name, "batch": batch, "repeats": repeats, "dtype": model.program.dtype,
           "macs": totals["macs"], "backward_macs": totals["backward_macs"]}
    if model.program.loss:
        result = train_throughput(model, batch, repeats)
        flops = 2 * (totals["macs"] + totals["backward_macs"])
        out["train"] = {"images_per_s": result.per_second, "repeats": list(result.repeats),
                        "steps_per_repeat": result.calls, "ms_per_step": 1e3 * result.seconds_per_call,
                        "gflops": result.per_second * flops / 1e9}
        from .augment import Augment

        augment = Augment.from_options(model.spec.training["augment"])
        if augment is not None:
            timed = augment_throughput(model, augment, batch, repeats)
            ms = 1e3 * timed.seconds_per_call
            out["augment"] = {"settings": model.spec.training["augment"], "ms_per_batch": ms,
                              "percent_of_step": 100 * ms / out["train"]["ms_per_step"]}
    else:
        result = inference_throughput(model, batch, repeats)
        out["inference"] = {"images_per_s": result.per_second, "repeats": list(result.repeats),
                            "calls_per_repeat": result.calls, "gflops": result.per_second * 2 * totals["macs"] / 1e9}
    out["latency_batch1"] = asdict(inference_latency(model))
    return out


def _summary_text(s: dict) -> str:
    lines = []
    if "train" in s:
        t = s["train"]
        lines.append(f"{s['spec']}: training step (forward + loss + backward + optimizer) at batch {s['batch']}, "
                     f"{s['dtype']}: {t['images_per_s']:,.1f} images/s ({t['ms_per_step']:.2f} ms per step; median "
                     f"of {s['repeats']} repeats of {t['steps_per_repeat']} steps), {t['gflops']:.2f} GFLOP/s")
    else:
        t = s["inference"]
        lines.append(f"{s['spec']}: inference at batch {s['batch']}, {s['dtype']}: {t['images_per_s']:,.1f} "
                     f"images/s (median of {s['repeats']} repeats), {t['gflops']:.2f} GFLOP/s")
    if "augment" in s:
        a = s["augment"]
        settings = ", ".join(f"{k}: {v}" for k, v in a["settings"].items() if v)
        lines.append(f"augmentation ({settings}): {a['ms_per_batch']:.3f} ms per batch of {s['batch']}, "
                     f"{a['percent_of_step']:.1f}% of the training step (fit does it before each step)")
    lat = s["latency_batch1"]
    lines.append(f"batch-1 inference latency (Model.predict, from Python): {lat['median_us']:.1f} us median "
                 f"(p10 {lat['p10_us']:.1f}, p90 {lat['p90_us']:.1f}; {lat['calls']} calls)")
    lines.append(f"FLOPs per image: 2 x ({s['macs']:,} forward + {s['backward_macs']:,} backward MACs)")
    return "\n".join(lines)


def bench_command(args) -> int:
    from .runtime import Model

    model = Model.compile(args.spec, build_dir=args.build_dir, threads=args.threads)
    model.init(0)
    if args.batch is None:
        args.batch = model.spec.training["batch_size"]
    if not args.layers:
        summary = _summary(model, args.batch, args.repeats)
        print(json.dumps(summary, indent=2) if args.json else _summary_text(summary))
        return 0
    rows = profile_layers(model, args.batch, args.repeats)
    passes = time_passes(model, args.batch, args.repeats)
    options = model.analysis.options
    peak = peak_gflops(options.threads, build_dir=args.build_dir, cc=options.cc, cflags=options.cflags)
    if args.json:
        total = sum(r.total_s for r in rows) or 1.0
        print(json.dumps({
            "spec": model.spec.name, "batch": args.batch, "repeats": args.repeats,
            "mode": "training" if model.program.loss else "inference",
            "ops": [{**asdict(r), "output_shape": list(r.output_shape), "percent": 100 * r.total_s / total,
                     "gflops": r.gflops, "percent_of_peak": 100 * r.gflops / peak} for r in rows],
            "peak_gflops": peak, "whole_model_s": passes}, indent=2))
    else:
        print(_profile_text(model, rows, passes, args.repeats, peak))
    return 0

"""Run one spec's generated C under AddressSanitizer and UndefinedBehaviorSanitizer.

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
        python tests/sanitize_run.py SPEC BUILD_DIR [--budget MACS] [--threads N] [--forward-only-at B]

Compiles SPEC with the sanitizers (any error aborts the process: -fno-sanitize-recover),
then at batch sizes 1, 7 and 33 runs inference (in one call and in chunks), the loss, the
gradients and optimizer steps: several at batch 1 (the optimizer's state carried from step to
step), one at the others (the same code at other sizes: single samples, an odd batch, and more
samples than one block of a batch-wide product, with a tail). Built at -O2 (the checks are the
same, the code several times faster than at -O1) with line tables only (-g1: the reports name
file and line; full debug information only made the compile slower). Sanitized code runs
about 10x slower than -O3, so a budget of multiply-accumulates bounds the work: a batch size
that does not fit runs fewer steps, or only the forward pass, or is skipped (batch 1 always
runs in full). Prints one line per batch size, then "ok".
With --canary it instead overflows an activation buffer on purpose, which must abort: the
proof that the preload and the flags really instrument the code. Used by
tests/test_sanitizers.py; a failure is an exit status other than 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cnncc  # noqa: E402

SANITIZE = ("-O2", "-g1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all")
BATCHES = (1, 7, 33)
STEPS = 3  # at the first batch size; one at the others


def targets(model, batch: int, rng) -> np.ndarray:
    loss = model.program.loss
    if loss.takes_labels:
        return rng.integers(0, loss.classes, batch)
    return rng.uniform(0, 1, (batch,) + tuple(model.output_shape))


def finite(name: str, value) -> None:
    if not np.isfinite(value).all():
        raise SystemExit(f"{name} is not finite")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("build_dir")
    parser.add_argument("--budget", type=float, default=1e9, help="multiply-accumulates to spend")
    parser.add_argument("--canary", action="store_true",
                        help="overflow a buffer on purpose: proves the sanitizers are live (must abort)")
    parser.add_argument("--forward-only-at", type=int, default=None,
                        help="run only the forward pass at this batch size (the big specs' largest one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="an OpenMP build with that many threads and sample slots")
    args = parser.parse_args()

    report = cnncc.check(args.spec)
    forward_macs = max(report.totals["macs"], 1)
    step_macs = forward_macs + report.totals["backward_macs"]
    model = cnncc.compile(args.spec, build_dir=args.build_dir, cflags=SANITIZE, threads=args.threads).init(1)
    rng = np.random.default_rng(0)
    if args.canary:  # the C forward of 2 samples into an activation buffer of 1 element
        from cnncc.abi import Bindings

        ffi = model.module.ffi
        c = Bindings(ffi, model.module.lib, model.program)
        pointer = lambda array: ffi.cast(f"{model.program.c_type} *", ffi.from_buffer(array))  # noqa: E731
        small = np.zeros(1, model.dtype)
        workspace = np.zeros(max(1, model.program.workspace_size), model.dtype)
        x = np.zeros((2,) + tuple(model.input_shape), model.dtype)
        ctx = c.new_context()
        ctx.params, ctx.activations, ctx.workspace = pointer(model.flat_params), pointer(small), pointer(workspace)
        c.forward(ctx, pointer(x), 2, 0, 0)
        print("the canary overflow went unnoticed")
        return 0
    budget = args.budget
    for batch in BATCHES:
        trains = model.program.loss is not None
        most = STEPS if batch == BATCHES[0] else 1
        # the forward, chunked and in the loss; the gradients and the steps
        full = batch * (3 * forward_macs + (most + 1) * step_macs * trains)
        least = batch * (forward_macs + 2 * step_macs * trains)
        forward_only = batch == args.forward_only_at
        complete = full <= budget and not forward_only  # everything this batch size can run
        if complete:
            steps = most
        elif not forward_only and (least <= budget or batch == BATCHES[0]):
            steps = 1
        elif batch * forward_macs <= budget:
            steps = 0  # the forward pass alone: every batch size runs through every kernel's forward
        else:
            print(f"batch {batch}: skipped (needs {least:.3g} MACs, {budget:.3g} left)")
            continue
        x = rng.normal(size=(batch,) + tuple(model.input_shape))
        out = model.forward(x)
        finite("output", out)
        done = ["forward"]
        if complete:
            chunked = model.forward(x, batch_size=max(1, batch // 3))
            if not np.allclose(chunked, out, rtol=1e-4, atol=1e-5):
                raise SystemExit("chunked inference differs")
            done.append("chunked forward")
        if trains and forward_only:
            done.append("no gradients (forward only at this batch size)")
        elif trains and not steps:
            done.append(f"no gradients (they need {least:.3g} MACs, {budget:.3g} left)")
        elif trains:
            y = targets(model, batch, rng)
            if complete:
                finite("inference loss", model.loss(x, y, training=False))
                done.append("loss")
            loss, grads = model.gradients(x, y, seed=batch)
            finite("loss", loss)
            for key, grad in grads.items():
                finite(f"gradient of {key}", grad)
            for _ in range(steps):
                finite("training loss", model.train_step(x, y))
            finite("parameters", model.flat_params)
            done.append(f"gradients, {steps} step{'s' if steps > 1 else ''}")
        budget -= full if complete else least if steps else batch * forward_macs
        print(f"batch {batch}: {', '.join(done)}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

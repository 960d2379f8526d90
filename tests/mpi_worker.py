"""One MPI rank of a tests/test_distributed.py run: `mpirun -np N python mpi_worker.py ...`.

Trains a spec with model.fit(..., distributed=MPI()) on data every rank makes alike (make_data,
which the tests also use for their single-process reference). Rank 0 saves the final flat
parameters, optimizer state and step count. --fault makes the last rank misbehave, as a fault
test needs: raise an error, hang, or change its parameters (a replica that diverges).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

FAULT_AFTER = 5  # steps the faulty rank runs normally first


def make_data(model, n: int, seed: int = 123):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(model.input_shape))
    y = rng.integers(0, model.program.loss.classes, size=n)
    return x, y


def inject_fault(model, fault: str) -> None:
    """Replace one of this model's methods by a faulty one (this rank only)."""
    calls = [0]
    if fault in ("raise", "hang"):
        compute = model.compute_gradients

        def faulty_compute(*args, **options):
            calls[0] += 1
            if calls[0] > FAULT_AFTER:
                if fault == "raise":
                    raise RuntimeError("injected failure on this rank")
                time.sleep(3600)
            return compute(*args, **options)

        model.compute_gradients = faulty_compute
    elif fault == "diverge":
        step = model.apply_step

        def diverging_step():
            step()
            calls[0] += 1
            if calls[0] == FAULT_AFTER:
                model.flat_params[0] += 1e-3

        model.apply_step = diverging_step


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--check-every", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--pid-dir", default=None, help="each rank writes its pid here as rank<N>")
    parser.add_argument("--fault", choices=("none", "raise", "hang", "diverge"), default="none")
    parser.add_argument("--csv", default=None, help="a CSVLogger callback writing there")
    parser.add_argument("--stop-unless-better-by", type=float, default=None,
                        help="an EarlyStopping callback on the loss with this min_delta (patience 0)")
    parser.add_argument("--augment-flip", action="store_true", help="horizontal flips as augmentation")
    args = parser.parse_args()

    import cnncc
    from cnncc.distributed import MPI, DistributedError

    mpi = MPI(check_every=args.check_every, timeout=args.timeout)
    model = cnncc.compile(args.spec, build_dir=args.build_dir).init(args.seed)
    initial_epoch = 0
    if args.resume and mpi.is_root:
        initial_epoch = model.load(args.resume).loaded_epoch or 0
    initial_epoch = mpi.broadcast_object(initial_epoch)
    if args.pid_dir:
        Path(args.pid_dir, f"rank{mpi.rank}").write_text(str(os.getpid()))
    if args.fault != "none" and mpi.rank == mpi.size - 1:
        inject_fault(model, args.fault)
    x, y = make_data(model, args.samples)
    from cnncc.callbacks import CSVLogger, EarlyStopping

    callbacks = ([CSVLogger(args.csv)] if args.csv else []) + \
        ([EarlyStopping("loss", min_delta=args.stop_unless_better_by)] if args.stop_unless_better_by else [])
    try:
        history = model.fit(x, y, epochs=args.epochs, seed=args.seed, verbose=0, checkpoint=args.checkpoint,
                            initial_epoch=initial_epoch, distributed=mpi, callbacks=callbacks,
                            augment={"flip": True} if args.augment_flip else None)
    except DistributedError as exc:
        if mpi.is_root:
            print(f"DistributedError: {exc}", file=sys.stderr)
        return 3
    if mpi.is_root:
        np.savez(args.out, params=model.flat_params, state=model.flat_optimizer_state, step=model.step_count,
                 loss=np.array(history["loss"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel training over MPI on this machine: images/s and scaling efficiency, and the
all-reduce time per step against the gradient size.

    python benchmarks/distributed.py                    # mnist_seed and vgg_cifar, writes results/
    python benchmarks/distributed.py --specs vgg_cifar --steps 4

For each spec, training at the spec's global batch (synthetic data, the second of two epochs
timed, so compilation and first-touch are outside), each configuration in its own processes:
  1x1  one process, one thread            (the baseline)
  2x1  `mpirun -np 2`, one thread per rank (each rank half of every global batch)
  1x2  one process, an OpenMP build on 2 threads (Model.compile(threads=2))
Scaling efficiency = images/s / (workers x baseline images/s). The 1x1 run also times a quarter
batch, so the compute time per step fits t(b) = t0 + b * t1 (benchmarks/distributed_model.py
uses it for the table on paper), and the 2-rank run times MPI_Allreduce alone on buffers from
1 KB to 16 MB and on the spec's gradient packet. Results: JSON on stdout and in
benchmarks/results/distributed-DATE.json with the CPU model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALLREDUCE_ELEMENTS = (256, 4096, 65536, 262144, 1048576, 4194304)  # float32: 1 KB .. 16 MB
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- child: one configuration ------------------------------------------------------------
def time_allreduce(mpi, elements: int, dtype, seconds: float = 0.3) -> float:
    """Median seconds of one in-place sum all-reduce of `elements` values."""
    import numpy as np

    buffer = np.ones(elements, dtype)
    times = []
    for _ in range(3):
        mpi.allreduce_sum(buffer)
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        mpi.barrier()
        start = time.perf_counter()
        mpi.allreduce_sum(buffer)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def child(args) -> None:
    import numpy as np

    import cnncc
    from cnncc.distributed import MPI, launched_by_mpi

    mpi = MPI(check_every=1000) if launched_by_mpi() else None
    model = cnncc.compile(ROOT / "specs" / f"{args.spec}.yaml", build_dir=args.build_dir, threads=args.threads)
    batch = model.spec.training["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * args.steps,) + tuple(model.input_shape)).astype(model.dtype)
    loss = model.program.loss
    y = loss.rules.random_targets(rng, x.shape[0], model.program.output.shape, loss.classes)

    def images_per_second(batch_size: int) -> float:
        model.init(0)
        history = model.fit(x, y, epochs=2, batch_size=batch_size, lr=1e-4, verbose=0,
                            distributed=mpi if mpi is not None and mpi.size > 1 else None)
        return history["images_per_second"][-1]

    result = {"spec": args.spec, "threads": args.threads, "ranks": mpi.size if mpi else 1, "batch": batch,
              "trainable": model.num_trainable, "dtype": model.program.dtype,
              "images_per_second": images_per_second(batch)}
    if result["ranks"] == 1 and args.threads == 1:
        quarter = max(1, batch // 4)
        result["quarter_batch"] = quarter
        result["quarter_images_per_second"] = images_per_second(quarter)
    if result["ranks"] > 1:
        result["allreduce_seconds"] = {str(n): time_allreduce(mpi, n, np.float32) for n in ALLREDUCE_ELEMENTS}
        result["packet_allreduce_seconds"] = time_allreduce(mpi, model.num_trainable + 2, model.dtype)
    if mpi is None or mpi.is_root:
        print(json.dumps(result))


# ---- parent ---------------------------------------------------------------------------------
def run(command: list[str], threads: int) -> dict:
    env = dict(os.environ, **MPI_ENV, OMP_NUM_THREADS=str(threads))
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", nargs="+", default=["mnist_seed", "vgg_cifar"])
    parser.add_argument("--steps", type=int, default=None, help="global batches per epoch (default: 100 for "
                                                                "mnist_seed, 6 otherwise)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--build-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="the JSON file (default benchmarks/results/distributed-DATE.json)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    build_dir = args.build_dir or tempfile.mkdtemp(prefix="cnncc-distributed-bench-")
    results = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
               "python": platform.python_version(), "runs": []}
    for spec in args.specs:
        steps = args.steps or (100 if spec == "mnist_seed" else 6)
        base = [sys.executable, str(Path(__file__).resolve()), "--child", f"--spec={spec}", f"--steps={steps}",
                f"--build-dir={build_dir}"]
        one = run(base + ["--threads=1"], 1)
        two_ranks = run(["mpirun", "--oversubscribe", "--bind-to", "core", "-np", "2"] + base + ["--threads=1"], 1)
        two_threads = run(base + ["--threads=2"], 2)
        for name, entry, workers in (("1x1", one, 1), ("2x1", two_ranks, 2), ("1x2", two_threads, 2)):
            entry["config"] = name
            entry["efficiency"] = entry["images_per_second"] / (workers * one["images_per_second"])
            results["runs"].append(entry)
            print(f"{spec:10s} {name}: {entry['images_per_second']:9,.0f} images/s  "
                  f"speed-up {entry['images_per_second'] / one['images_per_second']:.2f}x  "
                  f"efficiency {100 * entry['efficiency']:.0f}%", file=sys.stderr)
    out = Path(args.out or HERE / "results" / f"distributed-{results['date']}.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

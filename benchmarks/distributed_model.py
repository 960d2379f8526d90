"""The README's table on paper: expected time per step and scaling efficiency of data-parallel
training at 2, 8, 64 and 512 ranks, from an alpha-beta model of ring all-reduce fitted to the
compute time and gradient size benchmarks/distributed.py measured.

    python benchmarks/distributed_model.py benchmarks/results/distributed-DATE.json            # per spec
    python benchmarks/distributed_model.py --summary benchmarks/results/distributed-DATE.json  # README's

Model (one rank per node, one thread per rank, as measured):
  compute(b)    = t0 + b * t1, fitted to the 1x1 run at the spec's batch B and at B/4;
  allreduce(N)  = 2 (N - 1) alpha + 2 (N - 1) / N * S / beta   (ring: reduce-scatter + all-gather),
                  S = the packet cnncc reduces per step (trainable parameters + 2 values);
  step(N)       = compute(per-rank batch) + allreduce(N): cnncc reduces after the backward pass,
                  nothing overlaps;
  weak scaling  : every rank keeps batch B (global batch N * B), efficiency = compute(B) / step(N);
  strong scaling: the spec's global batch B split over N ranks (ceil(B / N) each), efficiency =
                  compute(B) / (N * step(N)); impossible once N > B;
  overlapped    : what gradient bucketing overlapped with the backward pass could reach at best,
                  compute(B) / max(compute(B), allreduce(N)) (weak scaling).
"""
from __future__ import annotations

import json
import math
import sys

RANKS = (2, 8, 64, 512)
NETWORKS = {
    # name: (alpha seconds per message, beta bytes per second achieved), stated assumptions
    "25 Gb/s Ethernet (TCP): alpha 25 us, beta 2.8 GB/s": (25e-6, 2.8e9),
    "200 Gb/s InfiniBand HDR (RDMA): alpha 2 us, beta 23 GB/s": (2e-6, 23e9),
}


def fit_compute(run: dict) -> tuple[float, float]:
    """(t0 seconds per step, t1 seconds per sample) through the two measured batch sizes."""
    big, small = run["batch"], run["quarter_batch"]
    t_big, t_small = big / run["images_per_second"], small / run["quarter_images_per_second"]
    per_sample = max((t_big - t_small) / (big - small), 0.0) if big > small else t_big / big
    return max(t_big - big * per_sample, 0.0), per_sample


def ring_allreduce(ranks: int, size_bytes: float, alpha: float, beta: float) -> float:
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * size_bytes / beta


def baselines(results: dict):
    """(run, t0, t1, packet bytes, compute seconds at the spec's batch) of every 1x1 run."""
    for run in results["runs"]:
        if run["config"] != "1x1":
            continue
        t0, t1 = fit_compute(run)
        itemsize = 8 if run["dtype"] == "float64" else 4
        yield run, t0, t1, (run["trainable"] + 2) * itemsize, t0 + run["batch"] * t1


def strong_efficiency(ranks: int, batch: int, t0: float, t1: float, compute_full: float, reduce: float):
    """Efficiency of the spec's global batch split over `ranks`, or None once ranks > batch."""
    if ranks > batch:
        return None
    return compute_full / (ranks * (t0 + math.ceil(batch / ranks) * t1 + reduce))


def summary(results: dict) -> str:
    """One table per network, one row per spec: weak and strong scaling efficiency at RANKS."""
    lines = []
    for network, (alpha, beta) in NETWORKS.items():
        lines.append(f"\n{network}; efficiency weak (every rank at the spec's batch) / strong (the "
                     "spec's batch split)\n")
        lines.append("| spec | batch | compute per step | reduced per step | "
                     + " | ".join(f"{n} ranks" for n in RANKS) + " |")
        lines.append("|---|---:|---:|---:|" + "---|" * len(RANKS))
        for run, t0, t1, size, compute_full in baselines(results):
            cells = []
            for ranks in RANKS:
                reduce = ring_allreduce(ranks, size, alpha, beta)
                strong = strong_efficiency(ranks, run["batch"], t0, t1, compute_full, reduce)
                cells.append(f"{100 * compute_full / (compute_full + reduce):.0f}% / "
                             + ("n/a" if strong is None else f"{100 * strong:.0f}%"))
            lines.append(f"| {run['spec']} | {run['batch']} | {1e3 * compute_full:.2f} ms | {size / 1e6:.2f} MB | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


def table(results: dict) -> str:
    lines = []
    for run, t0, t1, size, compute_full in baselines(results):
        batch = run["batch"]
        lines.append(f"\n**{run['spec']}**: batch {batch}, {run['trainable']:,} trainable parameters "
                     f"({size / 1e6:.2f} MB reduced per step); measured compute {1e3 * compute_full:.2f} ms per step "
                     f"(fit: {1e3 * t0:.2f} ms + {1e3 * t1:.3f} ms per sample)\n")
        for network, (alpha, beta) in NETWORKS.items():
            lines.append(f"\n{network}\n")
            lines.append("| ranks | all-reduce | weak: step | weak: efficiency | overlapped: efficiency "
                         "| strong: step | strong: efficiency |")
            lines.append("|---|---|---|---|---|---|---|")
            for ranks in RANKS:
                reduce = ring_allreduce(ranks, size, alpha, beta)
                weak = compute_full + reduce
                overlapped = compute_full / max(compute_full, reduce)
                strong = strong_efficiency(ranks, batch, t0, t1, compute_full, reduce)
                if strong is not None:
                    step = t0 + math.ceil(batch / ranks) * t1 + reduce
                    strong_cells = f"{1e3 * step:.2f} ms | {100 * strong:.0f}%"
                else:
                    strong_cells = f"n/a (batch {batch} < {ranks} ranks) | n/a"
                lines.append(f"| {ranks} | {1e3 * reduce:.3f} ms | {1e3 * weak:.2f} ms | "
                             f"{100 * compute_full / weak:.0f}% | {100 * overlapped:.0f}% | {strong_cells} |")
    return "\n".join(lines).lstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    render = table
    if argv[:1] == ["--summary"]:
        render, argv = summary, argv[1:]
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[0]) as handle:
        print(render(json.load(handle)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

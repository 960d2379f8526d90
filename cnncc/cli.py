"""The `cnncc` command line: check, ir, train, gradcheck, emit.

Exit status: 0 success, 2 an invalid spec (every problem printed, compiler style),
1 any other user-facing failure (bad data, a compiler missing, a non-finite loss).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SpecError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _cmd_check(args) -> int:
    from .pipeline import check

    report = check(Path(args.spec), batch=args.batch, threads=args.threads)
    if args.ir:
        from .ir import describe

        print(describe(report.program))
        return 0
    if args.format == "json":
        print(report.to_json())
    elif args.format == "markdown":
        print(report.to_markdown())
    else:
        print(report.to_text(explain=args.explain))
    return 0


def _cmd_ir(args) -> int:
    from .ir import describe
    from .pipeline import check

    print(describe(check(Path(args.spec)).program))
    return 0


def _cmd_layers(args) -> int:
    from .reference import spec_reference_markdown

    print(spec_reference_markdown(), end="")
    return 0


def _cmd_train(args) -> int:
    from .train_cli import train_command

    return train_command(args)


def _cmd_gradcheck(args) -> int:
    from .gradcheck import gradcheck_command

    return gradcheck_command(args)


def _cmd_emit(args) -> int:
    from .emit import emit_command

    return emit_command(args)


def _cmd_bench(args) -> int:
    from .bench import bench_command

    return bench_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncc", description="A declarative CNN compiler: YAML spec -> shape report -> C kernels -> model.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cnncc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="check a spec and print its shapes, parameters, MACs and memory",
                       description="Check a spec: every layer's output shape, parameters, MACs and "
                                   "receptive field, and the memory a training run needs.")
    p.add_argument("spec", help="the YAML spec")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    p.add_argument("--explain", action="store_true", help="show every size and count as its formula")
    p.add_argument("--batch", type=_positive, default=None, help="batch size for the training memory "
                                                                 "(default: the spec's training.batch_size)")
    p.add_argument("--ir", action="store_true", help="print the lowered IR instead of the report")
    p.add_argument("--threads", type=_positive, default=1,
                   help="the memory of a build for this many threads (each conv gets a scratch per thread)")
    p.set_defaults(run=_cmd_check)

    p = sub.add_parser("ir", help="print the IR: ops, buffers, offsets, forward and backward schedules",
                       description="Print the lowered IR of a spec.")
    p.add_argument("spec")
    p.set_defaults(run=_cmd_ir)

    p = sub.add_parser("layers", help="print the spec language reference (every field, default, constraint)",
                       description="Print the spec language reference as markdown.")
    p.set_defaults(run=_cmd_layers)

    p = sub.add_parser("train", help="compile a spec and train it on MNIST, synthetic data or an .npz",
                       description="Compile a spec, train it, report test accuracy and save the weights.")
    p.add_argument("spec")
    p.add_argument("--data", default="synthetic",
                   help="mnist | synthetic | FILE.npz (default: synthetic, built in, no download)")
    p.add_argument("--data-dir", default=None, help="where the MNIST files are (default: search)")
    p.add_argument("--epochs", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=None)
    p.add_argument("--lr", type=_positive_float, default=None)
    p.add_argument("--limit", type=_positive, default=None, help="use only the first N train and test samples")
    p.add_argument("--out", default=None, help="where to save the weights (.npz)")
    p.add_argument("--checkpoint", default=None, help="save a checkpoint here after every epoch")
    p.add_argument("--resume", default=None, help="resume from this checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=1, help="threads (> 1: an OpenMP build; default 1)")
    p.add_argument("--build-dir", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--distributed", choices=("auto", "mpi", "off"), default="auto",
                   help="data-parallel over MPI ranks: auto (when started by mpirun/mpiexec/srun with more than "
                        "one rank), mpi (always) or off (default: auto)")
    p.add_argument("--check-every", type=_positive, default=100,
                   help="MPI: compare the ranks' parameters every N steps (default 100)")
    p.add_argument("--mpi-timeout", type=_positive_float, default=600.0,
                   help="MPI: abort every rank when no collective finishes for this many seconds (default 600)")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("gradcheck", help="check a spec's gradients against finite differences (float64)",
                       description="Compile a spec in float64 and compare its backward pass with central "
                                   "finite differences on random data.")
    p.add_argument("spec")
    p.add_argument("--batch", type=_positive, default=2)
    p.add_argument("--samples", type=_positive, default=30, help="parameters checked per tensor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--build-dir", default=None)
    p.set_defaults(run=_cmd_gradcheck)

    p = sub.add_parser("emit", help="write standalone C (model, weights, example main.c, Makefile) for deployment",
                       description="Write the model's C (the same kernels as the Python module), optionally its "
                                   "weights as const arrays, an example main.c, a Makefile and a README into DIR.")
    p.add_argument("spec")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--weights", default=None, metavar="FILE.npz", help="compile these weights in (NAME_weights.c)")
    p.add_argument("--inference-only", action="store_true",
                   help="forward only: a static arena shared by tensors whose lifetimes do not overlap, no malloc")
    p.add_argument("--batch", type=_positive, default=1, help="samples per forward call in main.c and, with "
                                                              "--inference-only, in the arena (default 1)")
    p.add_argument("--board", default=None, metavar="BOARD",
                   help="a complete bare-metal project for this board instead: startup code, linker script, a "
                        "semihosting main.c and a Makefile whose `make run` runs it under QEMU (boards: mps2-an386)")
    p.add_argument("--build", action="store_true", help="with --board: build it and print its memory, measured "
                                                        "next to predicted")
    p.set_defaults(run=_cmd_emit)

    p = sub.add_parser("bench", help="time a spec: training images/s, batch-1 latency, or per-op (--layers)",
                       description="Compile a spec and time it on random data: training images/s at a batch "
                                   "size and the batch-1 inference latency; with --layers, every op's forward "
                                   "and backward on its own. The side-by-side comparison with PyTorch is "
                                   "benchmarks/bench.py.")
    p.add_argument("spec")
    p.add_argument("--layers", action="store_true", help="per-op profile: forward and backward ms of every op")
    p.add_argument("--batch", type=_positive, default=64, help="batch size (default 64)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed repeats; medians are reported (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=_positive, default=1, help="threads (> 1: an OpenMP build; default 1)")
    p.add_argument("--build-dir", default=None)
    p.set_defaults(run=_cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SpecError as exc:
        print(exc.format(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"cnncc: error: {exc}", file=sys.stderr)
        return 1

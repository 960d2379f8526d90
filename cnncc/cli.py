"""The `cnncc` command line: check, ir, train, gradcheck, emit, bench, export, import.

Exit status: 0 success (also when the reader of the output goes away, as `| head` does),
1 any other user-facing failure (bad data, a compiler missing, a non-finite loss),
2 an invalid spec (every problem printed, compiler style), 3 the spec file cannot be read
(missing, a directory, no permission).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import SpecError, SpecFileError
from .extras import MissingExtra

EXIT_FAILURE, EXIT_INVALID_SPEC, EXIT_UNREADABLE_SPEC = 1, 2, 3
BUILD_DIR_HELP = ("where compiled models are cached (default: $CNNCC_BUILD_DIR, else ./build); an unchanged spec "
                  "loads from this cache instead of compiling again")


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
    if args.int8:  # the int8 figures (cnncc/quantize), with the report's own
        from .quantize.cli import int8_figures, int8_figures_text

        if args.format == "json":
            import json

            print(json.dumps({**report.to_dict(), "int8": int8_figures(Path(args.spec))}, indent=2))
        else:
            print((report.to_markdown() if args.format == "markdown" else report.to_text(explain=args.explain))
                  + "\n" + int8_figures_text(Path(args.spec)))
        return 0
    if args.format == "json":
        print(report.to_json(explain=args.explain))
    elif args.format == "markdown":
        print(report.to_markdown(explain=args.explain))
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


def _cmd_evaluate(args) -> int:
    from .train_cli import evaluate_command

    return evaluate_command(args)


def _cmd_plot(args) -> int:
    from .train_cli import plot_command

    return plot_command(args)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {text!r}") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {value}")
    return value


def _add_data_arguments(p) -> None:
    from .datasets import SOURCES

    p.add_argument("--data", default="synthetic", help=f"{SOURCES} (default: synthetic, built in, no download)")
    p.add_argument("--data-dir", default=None, help="where the MNIST files are (default: $CNNCC_MNIST_DIR, "
                                                    "./data/mnist, ../shared/data/mnist)")
    p.add_argument("--limit", type=_positive, default=None, help="use only the first N train and test samples")
    p.add_argument("--resize", type=_positive, nargs=2, metavar=("H", "W"), default=None,
                   help="an image folder: resize every image to H x W (default: images of differing sizes "
                        "are refused)")


def _cmd_gradcheck(args) -> int:
    from .gradcheck import gradcheck_command

    return gradcheck_command(args)


def _cmd_emit(args) -> int:
    if args.int8:
        if args.backend is not None:
            raise ValueError("--backend does not apply to --int8: the int8 program has kernels of its own")
        if args.host:
            raise ValueError("--host does not apply to --int8: the int8 program has kernels of its own")
        if args.board is not None:
            from .boards.int8 import int8_board_command

            return int8_board_command(args)
        from .quantize.emit import emit_int8_command

        return emit_int8_command(args)
    from .emit import emit_command

    return emit_command(args)


def _cmd_bench(args) -> int:
    from .bench import bench_command

    return bench_command(args)


def _cmd_export(args) -> int:
    from .onnx.commands import export_command

    return export_command(args)


def _cmd_import(args) -> int:
    from .onnx.commands import import_command

    return import_command(args)


def _opset(text: str) -> int:
    value = _positive(text)
    if not 13 <= value <= 21:
        raise argparse.ArgumentTypeError(f"ONNX opsets 13 to 21 are supported, got {value}")
    return value


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
    p.add_argument("--int8", action="store_true", help="also give the int8 weight and arena bytes (cnncc emit --int8)")
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

    p = sub.add_parser("train", help="compile a spec and train it on MNIST, CIFAR, an image folder, an .npz or "
                                     "synthetic data",
                       description="Compile a spec, train it, report test accuracy and save the weights (to --out, "
                                   "else NAME_weights.npz in the current directory, never over an existing file "
                                   "without --force).")
    p.add_argument("spec", help="the YAML spec")
    _add_data_arguments(p)
    p.add_argument("--epochs", type=_positive, default=None, help="passes over the training data "
                                                                  "(default: the spec's training.epochs)")
    p.add_argument("--batch-size", type=_positive, default=None, help="samples per step "
                                                                      "(default: the spec's training.batch_size)")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: the spec's "
                                                                    "optimizer lr)")
    p.add_argument("--seed", type=_seed, default=0, help="seeds the initial weights, the shuffle, dropout and "
                                                         "augmentation: the same seed trains the same weights (default 0)")
    p.add_argument("--validation-split", type=_fraction, default=None, metavar="FRACTION",
                   help="hold out this last fraction of the training data (before shuffling) for validation")
    p.add_argument("--early-stopping", type=_non_negative, default=None, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs and keep the best epoch's "
                        "weights (needs --validation-split)")
    p.add_argument("--save-best", default=None, metavar="PATH", help="save the weights of the epoch with the "
                                                                     "best val_loss here (needs --validation-split)")
    p.add_argument("--log", default=None, metavar="HISTORY.csv", help="write the per-epoch history here "
                                                                      "(cnncc plot draws it)")
    p.add_argument("--plot", default=None, metavar="CURVES.png", help="draw the loss and accuracy curves here "
                                                                      "(needs matplotlib: pip install 'cnncc[plot]')")
    p.add_argument("--out", default=None, help="where to save the weights (default: NAME_weights.npz here)")
    p.add_argument("--force", action="store_true", help="overwrite an existing NAME_weights.npz")
    p.add_argument("--checkpoint", default=None, help="save a checkpoint here after every epoch")
    p.add_argument("--resume", default=None, help="resume from this checkpoint")
    p.add_argument("--threads", type=_positive, default=1, help="threads (> 1: an OpenMP build; default 1)")
    p.add_argument("--build-dir", default=None, help=BUILD_DIR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--distributed", choices=("auto", "mpi", "off"), default="auto",
                   help="data-parallel over MPI ranks: auto (when started by mpirun/mpiexec/srun with more than "
                        "one rank), mpi (always) or off (default: auto)")
    p.add_argument("--check-every", type=_positive, default=100,
                   help="MPI: compare the ranks' parameters every N steps (default 100)")
    p.add_argument("--mpi-timeout", type=_positive_float, default=600.0,
                   help="MPI: abort every rank when no collective finishes for this many seconds (default 600)")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate saved weights: loss, accuracy, per-class precision and recall, "
                                        "confusion matrix",
                       description="Compile a spec, load weights and evaluate them on a dataset's test split: loss, "
                                   "accuracy, and for class labels per-class precision and recall and the "
                                   "confusion matrix as text (--plot draws it).")
    p.add_argument("spec", help="the YAML spec")
    p.add_argument("--weights", required=True, metavar="W.npz", help="weights saved by cnncc train or Model.save")
    _add_data_arguments(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    p.add_argument("--batch-size", type=_positive, default=1000, help="samples per forward call (default 1000)")
    p.add_argument("--plot", default=None, metavar="CONFUSION.png", help="draw the confusion matrix here "
                                                                         "(needs matplotlib)")
    p.add_argument("--build-dir", default=None, help=BUILD_DIR_HELP)
    p.set_defaults(run=_cmd_evaluate)

    p = sub.add_parser("plot", help="draw a training history (CSV) as loss and accuracy curves (PNG)",
                       description="Draw the training and validation loss and accuracy against epoch from a "
                                   "history CSV (cnncc train --log, CSVLogger, History.to_csv).")
    p.add_argument("history", help="the history CSV")
    p.add_argument("-o", "--out", required=True, metavar="CURVES.png", help="the PNG to write")
    p.add_argument("--title", default=None, help="a title above the curves")
    p.set_defaults(run=_cmd_plot)

    p = sub.add_parser("gradcheck", help="check a spec's gradients against finite differences (float64)",
                       description="Compile a spec in float64 and compare its backward pass with central "
                                   "finite differences on random data.")
    p.add_argument("spec")
    p.add_argument("--batch", type=_positive, default=2)
    p.add_argument("--samples", type=_positive, default=30, help="parameters checked per tensor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--build-dir", default=None, help=BUILD_DIR_HELP)
    p.set_defaults(run=_cmd_gradcheck)

    p = sub.add_parser("emit", help="write standalone C (model, weights, example main.c, Makefile) for deployment",
                       description="Write the model's C (the Python module's kernels, planned within a device's RAM "
                                   "unless --host), optionally its "
                                   "weights as const arrays, an example main.c, a Makefile and a README into DIR.")
    p.add_argument("spec")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--weights", default=None, metavar="FILE.npz", help="compile these weights in (NAME_weights.c)")
    p.add_argument("--int8", default=None, metavar="Q.npz", help="emit the int8 program of this quantized model "
                                                                 "(cnncc quantize); --weights and --batch do not apply; "
                                                                 "with --board, that board's int8 project")
    p.add_argument("--inference-only", action="store_true",
                   help="forward only: a static arena shared by tensors whose lifetimes do not overlap, no malloc")
    p.add_argument("--batch", type=_positive, default=1, help="samples per forward call in main.c and, with "
                                                              "--inference-only, in the arena (default 1)")
    p.add_argument("--force", action="store_true",
                   help="overwrite files in DIR that cnncc did not generate (by default emit refuses)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="the C to write: vector (the default: GCC/Clang vector extensions, the Python "
                        "module's kernels) or portable (strict ISO C99 for any C compiler)")
    p.add_argument("--host", action="store_true",
                   help="plan the kernels for a host's memory, as the Python module does, instead of within a "
                        "device's RAM (F(4x4) Winograd also where its transformed filters pass 1 MB); not with "
                        "--board")
    p.add_argument("--board", default=None, metavar="BOARD",
                   help="a complete bare-metal project for this board instead: startup code, linker script, a "
                        "semihosting main.c and a Makefile whose `make run` runs it under QEMU (boards: mps2-an386)")
    p.add_argument("--build", action="store_true", help="with --board: build it and print its memory, measured "
                                                        "next to predicted")
    p.set_defaults(run=_cmd_emit)

    from .quantize.cli import add_quantize_parser

    add_quantize_parser(sub, _positive, _positive_float)

    p = sub.add_parser("bench", help="time a spec: training images/s, batch-1 latency, or per-op (--layers)",
                       description="Compile a spec and time it on random data: training images/s at a batch "
                                   "size and the batch-1 inference latency; with --layers, every op's forward "
                                   "and backward on its own. The side-by-side comparison with PyTorch is "
                                   "benchmarks/bench.py.")
    p.add_argument("spec")
    p.add_argument("--layers", action="store_true", help="per-op profile: forward and backward ms of every op")
    p.add_argument("--batch", type=_positive, default=None,
                   help="batch size (default: the spec's training.batch_size)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed repeats; medians are reported (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=_positive, default=1, help="threads (> 1: an OpenMP build; default 1)")
    p.add_argument("--build-dir", default=None, help=BUILD_DIR_HELP)
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("export", help="write a spec and its weights as an ONNX model",
                       description="Compile a spec, load its weights and write the network as an ONNX model "
                                   "(standard operators, names from the spec) for onnxruntime and other tools.")
    p.add_argument("spec")
    p.add_argument("--weights", required=True, metavar="FILE.npz", help="the weights (from cnncc train or import)")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset, 13 to 21 (default 17)")
    p.add_argument("--build-dir", default=None)
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("import", help="turn an ONNX model (e.g. from torch.onnx.export) into a spec and weights",
                       description="Read an ONNX model and write the equivalent cnncc spec (YAML) and its weights "
                                   "(.npz). Exit status 2 names the first node cnncc cannot express.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--out", required=True, metavar="SPEC.yaml")
    p.add_argument("--weights", required=True, metavar="FILE.npz", help="where to write the weights")
    p.set_defaults(run=_cmd_import)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`cnncc check spec.yaml | head`): no message. stdout now points at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SpecFileError as exc:
        print(f"cnncc: {exc.format()}", file=sys.stderr)
        return EXIT_UNREADABLE_SPEC
    except SpecError as exc:
        print(exc.format(), file=sys.stderr)
        return EXIT_INVALID_SPEC
    except MissingExtra as exc:  # an optional package (pyproject's extras) that is not installed
        print(f"cnncc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"cnncc: error: {exc}", file=sys.stderr)
        return 1

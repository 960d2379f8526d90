"""`cnncc train`: report, data, compile, fit with a progress bar, test accuracy, save; under
`mpirun -np N` data-parallel over the ranks (cnncc.distributed), rank 0 printing and saving."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import data as datasets
from .losses import loss_kind
from .options import CompileOptions
from .pipeline import analyse
from .runtime import Model


def load_data(spec, source: str, data_dir=None, limit=None, classes: int | None = None):
    """((x_train, y_train), (x_test, y_test)) for the spec, from mnist | synthetic | FILE.npz; with
    `training: {targets: input}` (an autoencoder) the targets are the inputs themselves."""
    (x_train, y_train), (x_test, y_test) = _load_source(spec, source, data_dir, limit, classes)
    if spec.training["targets"] == "input":
        return (x_train, x_train), (x_test, x_test)
    return (x_train, y_train), (x_test, y_test)


def _load_source(spec, source: str, data_dir=None, limit=None, classes: int | None = None):
    if source == "synthetic":
        autoencoder = spec.training["targets"] == "input"
        if not autoencoder and (spec.loss is None or not loss_kind(spec.loss).takes_labels):
            raise ValueError("the built-in synthetic data is for classification specs "
                             "(loss: softmax_cross_entropy) and autoencoders (training: {targets: input}); "
                             "pass --data FILE.npz")
        n_train, n_test = (limit, max(1, limit // 6)) if limit else (6000, 1000)
        # an autoencoder's images still come from class patterns; it never sees the labels
        classes = 10 if autoencoder else classes or analyse(spec).program.output.size
        return datasets.synthetic(shape=spec.input_shape, classes=classes, n_train=n_train, n_test=n_test)
    if source == "mnist":
        if tuple(spec.input_shape) != (1, 28, 28):
            raise ValueError(f"MNIST images are 1x28x28 (channels, height, width) but spec '{spec.name}' "
                             f"takes {tuple(spec.input_shape)}")
        return datasets.load_mnist(data_dir, limit=limit)
    if source.endswith(".npz"):
        (x_train, y_train), (x_test, y_test) = datasets.load_npz(source)
        if limit:
            x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
        return (x_train, y_train), (x_test, y_test)
    raise ValueError(f"--data must be mnist, synthetic or a .npz file, got {source!r}")


def distributed_from_args(args):
    """An MPI communicator when the run is data-parallel (--distributed mpi, or auto under an MPI
    launcher with more than one rank), else None."""
    from .distributed import MPI, launched_by_mpi

    if args.distributed == "off" or (args.distributed == "auto" and not launched_by_mpi()):
        return None
    mpi = MPI(check_every=args.check_every, timeout=args.mpi_timeout)
    return mpi if mpi.size > 1 or args.distributed == "mpi" else None


def train_command(args) -> int:
    distributed = distributed_from_args(args)
    if distributed is None:
        return _train(args, None, print)
    from .distributed import DistributedError
    from .train import TrainingError

    with distributed.guard():
        try:
            return _train(args, distributed, print if distributed.is_root else _silent)
        except (DistributedError, TrainingError):
            if distributed.is_root:
                raise  # every rank raised it; rank 0 reports it
            return 1


def _silent(*_args, **_options) -> None:
    """Ranks other than 0 print nothing."""


def _train(args, distributed, say) -> int:
    root = distributed is None or distributed.is_root
    analysis = analyse(Path(args.spec), CompileOptions(threads=args.threads))
    spec = analysis.spec
    say(analysis.report.to_text())
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss, so it compiles for inference only; "
                         "add e.g. `loss: softmax_cross_entropy` to train it")
    (x_train, y_train), (x_test, y_test) = load_data(spec, args.data, args.data_dir, args.limit,
                                                     classes=analysis.program.output.size)
    say(f"\ndata: {args.data}, {len(x_train):,} training and {len(x_test):,} test samples"
        + (f", on {distributed.size} MPI ranks" if distributed else ""))
    start = time.perf_counter()
    if distributed and not root:
        distributed.barrier()  # rank 0 compiles first; the others then load its build from the cache
    model = Model.compile(analysis, build_dir=args.build_dir)
    if distributed and root:
        distributed.barrier()
    say(f"compiled in {time.perf_counter() - start:.2f}s"
        f"{' (from the cache)' if model.module.from_cache else ''}: {model.module.path}")
    model.init(args.seed)
    initial_epoch = 0
    if args.resume and root:  # the other ranks receive rank 0's weights when fit starts
        model.load(args.resume)
        initial_epoch = model.loaded_epoch or 0
        say(f"resumed from {args.resume} after epoch {initial_epoch}")
    if distributed:
        initial_epoch = distributed.broadcast_object(initial_epoch)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, verbose=0 if args.quiet else 1, checkpoint=args.checkpoint,
                        initial_epoch=initial_epoch, distributed=distributed)
    seconds = time.perf_counter() - start
    if not root:
        return 0
    result = model.evaluate(x_test, y_test)
    accuracy = f", accuracy {100 * result['accuracy']:.2f}%" if result["accuracy"] is not None else ""
    epochs = len(history["loss"])
    print(f"\ntrained {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f}s; "
          f"test loss {result['loss']:.4f}{accuracy}")
    out = args.out or f"{spec.name}_weights.npz"
    model.save(out, epoch=initial_epoch + epochs)
    print(f"saved weights to {out}")
    sys.stdout.flush()
    return 0

"""`cnncc train` and `cnncc evaluate`: report, data (checked before anything compiles), compile,
fit with its callbacks, test accuracy, save; and the evaluation of saved weights. Under
`mpirun -np N`, training is data-parallel over the ranks (cnncc.distributed), rank 0 printing
and saving."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .data import DataError
from .datasets import load_source
from .datasets.checks import data_problem
from .options import CompileOptions
from .pipeline import analyse
from .runtime import Model


AUTOENCODER_SYNTHETIC_CLASSES = 10  # the class patterns an autoencoder's synthetic images come from


def load_data(spec, source: str, data_dir=None, limit=None, notes: list | None = None, resize=None, program=None):
    """((x_train, y_train), (x_test, y_test)) for a spec from a --data value (what was done is
    appended to notes). With `training: {targets: input}` (an autoencoder) the targets are the
    inputs themselves. program: the spec's lowered Program, if at hand (else it is analysed)."""
    loss = (program or analyse(spec).program).loss
    autoencoder = spec.training["targets"] == "input"
    classes = loss.classes if loss is not None and loss.takes_labels else None
    (x, y), (xt, yt) = load_source(source, spec.input_shape, AUTOENCODER_SYNTHETIC_CLASSES if autoencoder else classes,
                                   data_dir=data_dir, limit=limit, notes=notes, resize=resize)
    return ((x, x), (xt, xt)) if autoencoder else ((x, y), (xt, yt))


def _data_for(report, args, notes: list):
    """The spec's data, checked against its input and loss before anything compiles."""
    program = report.program
    (x, y), (xt, yt) = load_data(report.spec, args.data, args.data_dir, args.limit, notes,
                                 getattr(args, "resize", None), program)
    for what, (xs, ys) in (("training", (x, y)), ("test", (xt, yt))):
        problem = data_problem(program.input.shape, program.loss, xs, ys, f"the {what} data's")
        if problem:
            raise DataError(f"--data {args.data}: {problem}")
    return (x, y), (xt, yt)


def _weights_path(args, spec) -> Path:
    """Where the weights go: --out, else NAME_weights.npz here, never over an existing file without
    --out or --force (a second run would silently replace the first one's weights)."""
    if args.out:
        return Path(args.out)
    path = Path(f"{spec.name}_weights.npz")
    if path.exists() and not args.force:
        raise ValueError(f"{path.resolve()} exists: pass --out PATH for another file or --force to overwrite it")
    return path


def _callbacks(args) -> list:
    from .callbacks import CSVLogger, EarlyStopping, ModelCheckpoint

    needs_validation = [flag for flag, value in (("--early-stopping", args.early_stopping),
                                                  ("--save-best", args.save_best)) if value is not None]
    if needs_validation and not args.validation_split:
        raise ValueError(f"{' and '.join(needs_validation)} watch the validation loss: add --validation-split "
                         "(e.g. --validation-split 0.1)")
    callbacks = []
    if args.early_stopping is not None:
        callbacks.append(EarlyStopping("val_loss", patience=args.early_stopping, restore_best_weights=True))
    if args.save_best:
        callbacks.append(ModelCheckpoint(args.save_best, "val_loss", save_best_only=True))
    if args.log:
        callbacks.append(CSVLogger(args.log))
    return callbacks


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
    report, spec = analysis.report, analysis.spec
    say(report.to_text())
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss, so it compiles for inference only; "
                         "add e.g. `loss: softmax_cross_entropy` to train it")
    out = _weights_path(args, spec) if root else None
    callbacks = _callbacks(args)
    if distributed and callbacks:
        raise ValueError("--early-stopping, --save-best and --log are not supported with MPI ranks yet")
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()  # before training, not after it
    notes = []
    (x_train, y_train), (x_test, y_test) = _data_for(report, args, notes)
    for note in notes:
        say(f"note: {note}")
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
    if root:
        say(f"weights will be saved to {out.resolve()}")
    sys.stdout.flush()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, verbose=0 if args.quiet else 1, checkpoint=args.checkpoint,
                        initial_epoch=initial_epoch, validation_split=args.validation_split or None,
                        callbacks=callbacks or None, distributed=distributed)
    seconds = time.perf_counter() - start
    if not root:
        return 0
    result = model.evaluate(x_test, y_test)
    accuracy = f", accuracy {100 * result['accuracy']:.2f}%" if result["accuracy"] is not None else ""
    epochs = len(history)
    stopped = next((c for c in callbacks if getattr(c, "stopped_epoch", None)), None)
    if stopped is not None:
        print(f"\nearly stopping after epoch {stopped.stopped_epoch}: val_loss had not improved for "
              f"{stopped.patience} epoch(s); the weights are those of epoch {stopped.best_epoch}")
    print(f"\ntrained {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f}s; "
          f"test loss {result['loss']:.4f}{accuracy}")
    model.save(out, epoch=initial_epoch + epochs)
    print(f"saved weights to {out.resolve()}")
    if args.log:
        print(f"history written to {Path(args.log).resolve()}")
    if args.plot:
        from .plot import plot_history

        print(f"curves drawn in {plot_history(history, args.plot, title=spec.name).resolve()}")
    sys.stdout.flush()
    return 0


def evaluate_command(args) -> int:
    from .metrics import classification_text, confusion_matrix
    from .train import predicted_classes, predictions

    analysis = analyse(Path(args.spec))
    report, spec = analysis.report, analysis.spec
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss: there is nothing to evaluate it against")
    if not os.path.isfile(args.weights):
        raise ValueError(f"--weights {args.weights}: no such file (expected the .npz that cnncc train or "
                         "Model.save wrote)")
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()
    notes = []
    (x_train, y_train), (x_test, y_test) = _data_for(report, args, notes)
    x, y = (x_train, y_train) if args.split == "train" else (x_test, y_test)
    for note in notes:
        print(f"note: {note}")
    model = Model.compile(analysis, build_dir=args.build_dir).load(args.weights)
    result = model.evaluate(x, y, batch_size=args.batch_size)
    accuracy = f", accuracy {100 * result['accuracy']:.2f}%" if result["accuracy"] is not None else ""
    print(f"{spec.name} with {args.weights} on the {args.split} split of {args.data} ({len(x):,} samples): "
          f"loss {result['loss']:.4f}{accuracy}")
    predicted = predicted_classes(model, predictions(model, x, args.batch_size))
    if predicted is None:
        if args.plot:
            raise ValueError(f"--plot draws a confusion matrix, which needs class labels; loss {spec.loss} has none")
        return 0
    matrix = confusion_matrix(y, predicted, model.program.loss.classes)  # labels checked by evaluate
    print()
    print(classification_text(matrix))
    if args.plot:
        from .plot import plot_confusion

        print(f"\nconfusion matrix drawn in "
              f"{plot_confusion(matrix, args.plot, title=f'{spec.name}: {args.split} split').resolve()}")
    return 0


def plot_command(args) -> int:
    from .history import History
    from .plot import plot_history

    history = History.from_csv(args.history)
    print(f"drew {len(history)} epoch(s) in {plot_history(history, args.out, title=args.title).resolve()}")
    return 0

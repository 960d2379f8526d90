"""`cnncc train`: report, data, compile, fit with a progress bar, test accuracy, save."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import data as datasets
from .report import check
from .runtime import Model


def load_data(spec, source: str, data_dir=None, limit=None):
    """((x_train, y_train), (x_test, y_test)) for the spec, from mnist | synthetic | FILE.npz; with
    `training: {targets: input}` (an autoencoder) the targets are the inputs themselves."""
    (x_train, y_train), (x_test, y_test) = _load_source(spec, source, data_dir, limit)
    if spec.training["targets"] == "input":
        return (x_train, x_train), (x_test, x_test)
    return (x_train, y_train), (x_test, y_test)


def _load_source(spec, source: str, data_dir=None, limit=None):
    if source == "synthetic":
        if spec.loss != "softmax_cross_entropy" and spec.training["targets"] != "input":
            raise ValueError("the built-in synthetic data is for classification specs "
                             "(loss: softmax_cross_entropy) and autoencoders (training: {targets: input}); "
                             "pass --data FILE.npz")
        n_train, n_test = (limit, max(1, limit // 6)) if limit else (6000, 1000)
        # an autoencoder's images still come from class patterns; it never sees the labels
        classes = check(spec).program.output.size if spec.training["targets"] != "input" else 10
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


def train_command(args) -> int:
    report = check(Path(args.spec))
    spec = report.spec
    print(report.to_text())
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss, so it compiles for inference only; "
                         "add e.g. `loss: softmax_cross_entropy` to train it")
    (x_train, y_train), (x_test, y_test) = load_data(spec, args.data, args.data_dir, args.limit)
    print(f"\ndata: {args.data}, {len(x_train):,} training and {len(x_test):,} test samples")
    start = time.perf_counter()
    model = Model.compile(spec, build_dir=args.build_dir, threads=args.threads)
    print(f"compiled in {time.perf_counter() - start:.2f}s"
          f"{' (from the cache)' if model.module.from_cache else ''}: {model.module.path}")
    model.init(args.seed)
    initial_epoch = 0
    if args.resume:
        model.load(args.resume)
        initial_epoch = model.loaded_epoch or 0
        print(f"resumed from {args.resume} after epoch {initial_epoch}")
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, verbose=0 if args.quiet else 1, checkpoint=args.checkpoint,
                        initial_epoch=initial_epoch)
    seconds = time.perf_counter() - start
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

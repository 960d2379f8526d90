"""The data-parallel training loop: `model.fit(..., distributed=cnncc.distributed.MPI())`.

Every rank holds the whole model and the whole dataset and walks the same shuffled order of
global batches (the spec's batch size). Per step each rank:
  1. takes its shard of the global batch (distributed.shard: contiguous, uneven splits handled),
  2. computes its gradients with the C kernels (Model.compute_gradients),
  3. scales them by shard / batch and joins ONE all-reduce (a packet: the gradients, the
     weighted loss and the correct predictions), whose sum is the gradient of the global
     batch-mean loss,
  4. takes the same optimizer step (Model.apply_step), so the replicas stay identical.
Batchnorm uses its shard's statistics in training (PyTorch DDP without SyncBatchNorm); the
running statistics are averaged over the ranks at the end of every epoch. Dropout seeds include
the rank, and so do augmentation's draws. Rank 0's parameters and optimizer state are broadcast
at the start; every `check_every` steps and at each epoch's end the ranks compare a hash of them.
Only rank 0 prints, evaluates and writes the checkpoint. Callbacks run on every rank on rank 0's
History rows, rank 0's stop and learning-rate decisions hold everywhere, and only rank 0's
ModelCheckpoint and CSVLogger write (Run.writes_files).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .distributed import DistributedError, shard, state_digest
from .callbacks import Run
from .history import History
from .progress import Progress
from .train import (TrainingError, accuracy_hits, epoch_order, evaluate, fit_columns, learning_rate,
                    measures_accuracy)

SEED_MASK = (1 << 64) - 1  # the C side takes a uint64_t


def step_seed(seed: int, step: int, rank: int, ranks: int) -> int:
    """The dropout seed of a rank's shard at a step: distinct for every (seed, step, rank), and for
    one rank the seed single-process fit uses."""
    return ((seed * 1_000_003 + step + 1) * ranks + rank) & SEED_MASK


def distributed_fit(model, x, y, mpi, *, epochs: int, batch_size: int, schedule: str, base_lr: float,
                    validation_data, shuffle: bool, seed: int, verbose: int, checkpoint,
                    initial_epoch: int, callbacks=(), augment=None) -> History:
    """train.fit's loop over MPI ranks; x and y are validated, the options resolved (by fit)."""
    with mpi.guard():
        settings = (x.shape[0], batch_size, epochs, initial_epoch, shuffle, seed, schedule, base_lr)
        _agree(mpi, settings, "the dataset size and the fit options (n, batch_size, epochs, initial_epoch, "
                              "shuffle, seed, schedule, lr)")
        _start_from_root(model, mpi)
        return _Loop(model, mpi, x, y, batch_size, seed, augment).run(
            epochs, schedule, base_lr, validation_data, shuffle, verbose, checkpoint, initial_epoch, callbacks)


def _agree(mpi, value, what: str) -> None:
    """Stop (on every rank) unless every rank passes the same value."""
    values = mpi.gather_objects(value)
    differ = [rank for rank, other in enumerate(values) if other != values[0]]
    if differ:
        raise DistributedError(f"ranks {', '.join(map(str, differ))} differ from rank 0 in {what}: "
                               f"{values[differ[0]]} against {values[0]}; every rank must train on the same data "
                               "with the same options")


def _start_from_root(model, mpi) -> None:
    """Every rank continues from rank 0's parameters, optimizer state, step and hyperparameters
    (so a checkpoint, or an init, only rank 0 made is everyone's start)."""
    mpi.broadcast(model.flat_params)
    mpi.broadcast(model.flat_optimizer_state)
    model.step_count, hyper = mpi.broadcast_object((model.step_count, dict(model.hyper)))
    model.hyper.update(hyper)


def verify_replicas(model, mpi) -> None:
    """Stop with DistributedError on every rank if any rank's parameters, optimizer state or step
    differ from rank 0's (a hash each, gathered: a few bytes per rank)."""
    digests = mpi.gather_objects(state_digest(model))
    differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differ:
        raise DistributedError(
            f"the replicas diverged: after step {model.step_count} the parameters or optimizer state of rank"
            f"{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} differ from rank 0's. Every rank must "
            "run the same cnncc build and spec; otherwise suspect a memory fault or nondeterministic code")


def average_running_statistics(model, mpi) -> None:
    """Replace each rank's batchnorm running statistics by their mean over the ranks."""
    running = model.flat_params[model.num_trainable:]
    if running.size:
        mpi.allreduce_sum(running)
        running /= mpi.size


class _Loop:
    def __init__(self, model, mpi, x, y, batch_size: int, seed: int, augment=None):
        self.model, self.mpi, self.x, self.y = model, mpi, x, y
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        local = shard(batch_size, 0, mpi.size).stop  # rank 0's shard is the largest
        self.batch_x = np.empty((local,) + x.shape[1:], model.dtype)
        self.batch_y = np.empty((local,) + y.shape[1:], y.dtype)
        trainable = model.num_trainable
        # One all-reduce per step carries [weighted gradients | weighted loss | correct predictions].
        self.packet = np.empty(trainable + 2, model.dtype)
        self.with_accuracy = measures_accuracy(model)

    def run(self, epochs, schedule, base_lr, validation_data, shuffle, verbose, checkpoint, initial_epoch,
            callbacks=()):
        model, mpi, n = self.model, self.mpi, self.x.shape[0]
        training = model.spec.training
        history = History()
        run = Run(model, history, fit_columns(model, validation_data), mpi.rank, mpi.size)
        for callback in callbacks:
            callback.on_train_begin(run)
        progress = Progress(verbose if mpi.is_root else 0)
        for epoch in range(initial_epoch, epochs):
            model.hyper["lr"] = learning_rate(schedule, base_lr, epoch, epochs, training["step_size"],
                                              training["gamma"]) * run.lr_factor
            order = epoch_order(n, self.seed, epoch, shuffle)
            progress.start_epoch(epoch + 1, epochs, n)
            total_loss, hits = 0.0, 0
            start = time.perf_counter()
            for batch_index, first in enumerate(range(0, n, self.batch_size)):
                index = order[first:first + self.batch_size]
                loss, batch_hits = self.step(index)
                if not math.isfinite(loss):
                    where = f" (last checkpoint: {checkpoint})" if checkpoint and epoch > initial_epoch else ""
                    raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, batch {batch_index + 1}; "
                                        f"the weights are those before this batch{where}. Try a lower learning "
                                        "rate or check the data for extreme values.")
                total_loss += loss * index.shape[0]
                hits += batch_hits
                seen = first + index.shape[0]
                progress.batch(seen, total_loss / seen, hits / seen if self.with_accuracy else None)
                for callback in callbacks:
                    callback.on_batch_end(run, batch_index, {"loss": loss, "size": index.shape[0]})
                if model.step_count % mpi.check_every == 0:
                    verify_replicas(model, mpi)
            elapsed = time.perf_counter() - start
            average_running_statistics(model, mpi)
            verify_replicas(model, mpi)
            row = {"epoch": epoch + 1, "loss": total_loss / n, "accuracy": hits / n if self.with_accuracy else None,
                   "lr": model.hyper["lr"], "seconds": elapsed, "images_per_second": n / max(elapsed, 1e-9)}
            if validation_data is not None:
                row["val_loss"], row["val_accuracy"] = self.validate(validation_data)
            history.append(mpi.broadcast_object(row))  # rank 0's timings: every History (and callback) alike
            progress.end_epoch(history.rows[-1])
            if checkpoint and mpi.is_root:
                model.save(checkpoint, epoch=epoch + 1)
            for callback in callbacks:
                callback.on_epoch_end(run, epoch + 1, history.rows[-1])
            # rank 0's decisions hold everywhere, even for a callback that decides differently per rank
            run.stop, run.lr_factor = mpi.broadcast_object((run.stop, run.lr_factor))
            if run.stop:
                break
        for callback in callbacks:
            callback.on_train_end(run)
        mpi.barrier()  # nobody leaves before rank 0's last checkpoint is written
        return history

    def step(self, index: np.ndarray) -> tuple[float, int]:
        """One step on a global batch; returns its mean loss and correct predictions (every rank
        the same), the optimizer step taken only if that loss is finite."""
        model, mpi, packet = self.model, self.mpi, self.packet
        trainable, count = model.num_trainable, index.shape[0]
        mine = index[shard(count, mpi.rank, mpi.size)]
        local = mine.shape[0]
        if local:
            bx, by = self.batch_x[:local], self.batch_y[:local]
            np.take(self.x, mine, axis=0, out=bx)
            np.take(self.y, mine, axis=0, out=by)
            if self.augment is not None:  # each rank its own draws, as for dropout
                self.augment.apply(bx, step_seed(self.seed, model.step_count, mpi.rank, mpi.size), model.step_count)
            loss = model.compute_gradients(bx, by, seed=step_seed(self.seed, model.step_count, mpi.rank, mpi.size),
                                           checked=True)
            weight = local / count
            np.multiply(model.flat_grads[:trainable], weight, out=packet[:trainable])
            packet[trainable] = loss * weight
            packet[trainable + 1] = accuracy_hits(model, model.last_output(local), by) if self.with_accuracy else 0
        else:
            packet[...] = 0  # fewer samples than ranks: this one adds nothing
        mpi.allreduce_sum(packet)
        loss = float(packet[trainable])
        if math.isfinite(loss):
            np.copyto(model.flat_grads[:trainable], packet[:trainable])
            model.apply_step()
        return loss, int(round(float(packet[trainable + 1])))

    def validate(self, validation_data) -> tuple[float, float | None]:
        """Rank 0 evaluates; every rank records its result, so the histories agree."""
        mpi = self.mpi
        result = evaluate(self.model, *validation_data) if mpi.is_root else None
        result = mpi.broadcast_object(result)
        return result["loss"], result["accuracy"]

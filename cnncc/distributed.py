"""Data-parallel training over MPI: the communicator, its failure handling, and the launch.

cnncc does not carry its own communication engine: MPI (Open MPI through mpi4py, the optional
extra `cnncc[mpi]`) moves the bytes. `MPI()` wraps a communicator for `model.fit(...,
distributed=MPI())` and for `mpirun -np N cnncc train SPEC`; the training loop that drives it
is cnncc.distributed_fit.

Failure handling. A rank that raises prints what happened and aborts the communicator, which
ends every rank (mpirun also ends the job when a rank dies). A watchdog thread covers what MPI
alone would not notice, a rank that hangs or stops: when no collective has finished for
`timeout` seconds it aborts too. Errors every rank detects together (replicas that diverged, a
non-finite loss) are raised on every rank as ordinary exceptions instead, so only rank 0 needs
to report them.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

INSTALL_HINT = ("distributed training needs mpi4py and an MPI library: pip install 'cnncc[mpi]' (or pip install "
                "mpi4py) with Open MPI installed (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev)")

# Variables an MPI launcher sets in every rank it starts: Open MPI's mpirun, then PMI (MPICH,
# Slurm's srun) and PMIx (Open MPI 5, PRRTE).
LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


class DistributedError(RuntimeError):
    """Every rank found that training cannot go on (ranks disagree); raised on all of them."""


def launched_by_mpi(environ=None) -> bool:
    """Whether this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in LAUNCH_VARIABLES)


def shard(count: int, rank: int, ranks: int) -> slice:
    """The rank's part of `count` samples: contiguous, disjoint, covering all of them; the first
    count % ranks ranks take one sample more (a rank may get none when count < ranks)."""
    base, extra = divmod(count, ranks)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def state_digest(model) -> str:
    """A hash of what must be identical on every rank: the trainable parameters, the optimizer
    state and the step count (not the running statistics: each rank's follow its own shard)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(model.flat_params[:model.num_trainable]))
    digest.update(memoryview(model.flat_optimizer_state))
    digest.update(str(model.step_count).encode())
    return digest.hexdigest()


class _Watchdog:
    """Aborts the job when no collective has finished (no `beat`) for `timeout` seconds."""

    def __init__(self, timeout: float, abort):
        self.timeout = timeout
        self._abort = abort
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cnncc-mpi-watchdog", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self._last > self.timeout:
                self._abort(f"no collective operation finished for {self.timeout:g} s: another rank died, "
                            "hangs or is far slower; aborting every rank")
                return


class MPI:
    """Data-parallel training over an MPI communicator (default: every rank mpirun started).

    check_every: every that many steps the ranks compare a hash of their parameters and
    optimizer state, and stop with DistributedError if any differ. timeout: seconds without a
    finished collective after which the watchdog aborts the job; it must exceed the longest
    stretch one rank works alone (rank 0's validation and checkpoint writing, a compile)."""

    def __init__(self, comm=None, check_every: int = 100, timeout: float = 600.0):
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        try:
            from mpi4py import MPI as mpi
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
        self._mpi = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.check_every = check_every
        self.timeout = float(timeout)
        self._watchdog: _Watchdog | None = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints, evaluates and writes files."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"<cnncc.distributed.MPI rank {self.rank} of {self.size}>"

    # ---- collectives (each one that finishes tells the watchdog the job is alive) --------
    def allreduce_sum(self, buffer: np.ndarray) -> None:
        """Sum a contiguous array over the ranks, in place."""
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        self._beat()

    def broadcast(self, buffer: np.ndarray) -> None:
        """Overwrite a contiguous array with rank 0's, in place."""
        self.comm.Bcast(buffer, root=0)
        self._beat()

    def broadcast_object(self, value):
        """Rank 0's value of a small picklable object."""
        value = self.comm.bcast(value, root=0)
        self._beat()
        return value

    def gather_objects(self, value) -> list:
        """Every rank's value of a small picklable object, by rank, on every rank."""
        values = self.comm.allgather(value)
        self._beat()
        return values

    def barrier(self) -> None:
        self.comm.Barrier()
        self._beat()

    def _beat(self) -> None:
        if self._watchdog is not None:
            self._watchdog.beat()

    # ---- failure ---------------------------------------------------------------------------
    def abort(self, message: str) -> None:
        """Print the message (with this rank's number) and end every rank of the job."""
        try:
            sys.stderr.write(f"cnncc: rank {self.rank} of {self.size}: {message}\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            try:
                self.comm.Abort(1)
            finally:
                os._exit(1)  # Abort does not return; should it fail, this rank still ends

    @contextmanager
    def guard(self):
        """Run a block under the watchdog; an exception that only this rank raised aborts the job
        (every rank would otherwise wait for it forever). Agreed errors (DistributedError, and
        train.TrainingError, which every rank raises on the same reduced loss) pass through."""
        from .train import TrainingError

        outer = self._watchdog is None
        if outer:
            self._watchdog = _Watchdog(self.timeout, self.abort)
        try:
            yield self
        except (DistributedError, TrainingError):
            raise
        except KeyboardInterrupt:
            self.abort("interrupted; aborting every rank")
        except BaseException as exc:  # noqa: BLE001  (whatever it is, the other ranks must not hang)
            self.abort(f"error: {exc.__class__.__name__}: {exc}; aborting every rank")
        finally:
            if outer:
                self._watchdog.stop()
                self._watchdog = None

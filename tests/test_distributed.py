"""Data-parallel training over MPI: real `mpirun -np 2` and `-np 3` on localhost.

Every rank runs tests/mpi_worker.py (or `python -m cnncc train`); the single-process reference
runs here, on the same build (the session cache) and the same data (mpi_worker.make_data).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.distributed import launched_by_mpi, shard
from cnncc.distributed_fit import step_seed
from cnncc.train import epoch_order
from mpi_worker import make_data
from tools import need_command, need_module

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
INSTALL = "apt-get install -y openmpi-bin libopenmpi-dev && pip install mpi4py"
EQUAL = 1e-12  # float64: the sum over ranks is in another order than the sum over one batch
FAULT_SECONDS = 30

SPECS = {
    "sgd": """
name: mpi_sgd
dtype: float64
input: {channels: 1, height: 8, width: 8}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, activation: relu}
  - {name: pool, type: maxpool2d, kernel: 2}
  - {type: flatten}
  - {name: fc, type: dense, units: 5}
loss: softmax_cross_entropy
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.001}
training: {batch_size: 8, epochs: 2}
""",
    "adam": """
name: mpi_adam
dtype: float64
input: {channels: 2, height: 6, width: 6}
layers:
  - {name: conv, type: conv2d, filters: 3, kernel: 3, padding: 1, activation: tanh}
  - {type: flatten}
  - {name: fc1, type: dense, units: 8, activation: relu}
  - {name: fc2, type: dense, units: 4}
loss: softmax_cross_entropy
optimizer: {type: adam, lr: 0.01}
training: {batch_size: 8, epochs: 2}
""",
    "batchnorm": """
name: mpi_batchnorm
dtype: float64
input: {channels: 1, height: 8, width: 8}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3}
  - {name: bn, type: batchnorm}
  - {name: act, type: relu}
  - {type: flatten}
  - {name: fc, type: dense, units: 5}
loss: softmax_cross_entropy
optimizer: {type: sgd, lr: 0.02}
training: {batch_size: 8, epochs: 2}
""",
    "dropout": """
name: mpi_dropout
dtype: float64
input: {channels: 1, height: 8, width: 8}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3}
  - {name: bn, type: batchnorm}
  - {name: act, type: relu}
  - {name: drop, type: dropout, rate: 0.25}
  - {type: flatten}
  - {name: fc, type: dense, units: 5}
loss: softmax_cross_entropy
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
training: {batch_size: 8, epochs: 2}
""",
}


@pytest.fixture(scope="module")
def specs(tmp_path_factory, compile_many):
    """Spec files at fixed paths for this module (the build cache keys on the path), compiled once
    into the session cache, where every rank then finds them."""
    folder = tmp_path_factory.mktemp("mpi-specs")
    paths = {}
    for key, text in SPECS.items():
        paths[key] = folder / f"{key}.yaml"
        paths[key].write_text(text)
    compile_many(list(paths.values()))
    return paths


@pytest.fixture(scope="module")
def mpirun():
    need_command("mpirun", INSTALL)
    need_module("mpi4py", "pip install mpi4py  (or pip install 'cnncc[mpi]')")
    return "mpirun"


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        env.pop(name, None)
    return env


def launch(ranks: int, *command) -> subprocess.Popen:
    return subprocess.Popen(["mpirun", "--oversubscribe", "-np", str(ranks), *command], env=mpi_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def run_worker(ranks: int, spec, build_dir, out, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    flags = [f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}") for key, value in options.items()]
    process = launch(ranks, sys.executable, str(WORKER), f"--spec={spec}", f"--build-dir={build_dir}",
                     f"--out={out}", *flags)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def trained(path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def single_process(spec, build_dir, samples=40, epochs=2, seed=7, resume=None) -> cnncc.Model:
    model = cnncc.compile(spec, build_dir=build_dir).init(seed)
    initial_epoch = model.load(resume).loaded_epoch if resume else 0
    x, y = make_data(model, samples)
    model.fit(x, y, epochs=epochs, seed=seed, verbose=0, initial_epoch=initial_epoch)
    return model


def assert_same_training(result: dict, model, tolerance=EQUAL) -> None:
    trainable = model.num_trainable
    assert int(result["step"]) == model.step_count
    np.testing.assert_allclose(result["params"][:trainable], model.flat_params[:trainable], rtol=0, atol=tolerance)
    np.testing.assert_allclose(result["state"], model.flat_optimizer_state, rtol=0, atol=tolerance)


# ---- without MPI: the pieces ------------------------------------------------------------
def test_shards_are_disjoint_cover_the_batch_and_split_unevenly():
    for count in range(0, 12):
        for ranks in range(1, 6):
            parts = [shard(count, rank, ranks) for rank in range(ranks)]
            assert [i for part in parts for i in range(count)[part]] == list(range(count))
            sizes = [part.stop - part.start for part in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [shard(8, rank, 3) for rank in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 8)]


def test_dropout_seeds_differ_per_rank_and_match_single_process_fit_on_one_rank():
    seeds = {step_seed(7, step, rank, 4) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
    assert step_seed(7, 3, 0, 1) == 7 * 1_000_003 + 4  # the seed train.fit gives step 4
    assert 0 <= step_seed(-5, 0, 1, 2) < 1 << 64


def test_launch_detection():
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"}) and launched_by_mpi({"PMI_SIZE": "4"})
    assert not launched_by_mpi({"PATH": "/usr/bin"})


def test_missing_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'cnncc\[mpi\]'.*apt-get install openmpi-bin"):
        cnncc.distributed.MPI()


def test_bad_mpi_options_are_refused_before_mpi_starts():
    with pytest.raises(ValueError, match="check_every must be a positive integer"):
        cnncc.distributed.MPI(check_every=0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        cnncc.distributed.MPI(timeout=float("nan"))


def test_compute_gradients_then_apply_step_is_a_train_step(specs, build_dir):
    """The Model surface distributed training drives: the two halves of train_step, in place."""
    halves = cnncc.compile(specs["batchnorm"], build_dir=build_dir).init(3)
    whole = cnncc.compile(specs["batchnorm"], build_dir=build_dir).init(3)
    x, y = make_data(halves, 6)
    for seed in (11, 12):
        loss = halves.compute_gradients(x, y, seed=seed)
        _, grads = whole.gradients(x, y, seed=seed)
        for key, value in grads.items():
            offset = next(p.offset for p in halves.program.params if p.key == key)
            np.testing.assert_array_equal(halves.flat_grads[offset:offset + value.size], value.ravel())
        halves.apply_step()
        assert whole.train_step(x, y, seed=seed) == loss
        np.testing.assert_array_equal(halves.flat_params, whole.flat_params)  # incl. running statistics
        np.testing.assert_array_equal(halves.flat_optimizer_state, whole.flat_optimizer_state)
        assert halves.step_count == whole.step_count
    assert np.shares_memory(halves.params["fc.weight"], halves.flat_params)
    assert halves.num_trainable < halves.flat_params.size  # the running statistics come after


# ---- real mpirun ----------------------------------------------------------------------------
def test_two_ranks_train_like_one_process_with_the_global_batch(mpirun, specs, build_dir, tmp_path):
    result = run_worker(2, specs["sgd"], build_dir, tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    reference = single_process(specs["sgd"], build_dir)
    assert reference.step_count == 10
    assert_same_training(trained(tmp_path / "out.npz"), reference)


def test_callbacks_run_on_every_rank_with_rank_0s_decisions_and_only_rank_0_writes(mpirun, specs, build_dir,
                                                                                   tmp_path):
    # EarlyStopping wanting a loss 10 lower each epoch stops after the second epoch, on both ranks
    # (else the other rank would wait in the next epoch's all-reduce until the watchdog fired)
    csv = tmp_path / "log.csv"
    result = run_worker(2, specs["sgd"], build_dir, tmp_path / "out.npz", epochs=5, csv=csv,
                        stop_unless_better_by=10.0)
    assert result.returncode == 0, result.stderr
    out = trained(tmp_path / "out.npz")
    assert len(out["loss"]) == 2 and int(out["step"]) == 10  # 2 epochs of 5 global batches
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 3  # one writer: a header and the 2 epochs
    # the same two epochs as one process: callbacks change nothing but when training stops
    assert_same_training(out, single_process(specs["sgd"], build_dir))


def test_augmentation_over_ranks_draws_per_rank_and_keeps_the_replicas_equal(mpirun, specs, build_dir, tmp_path):
    plain = run_worker(2, specs["sgd"], build_dir, tmp_path / "plain.npz")
    flipped = run_worker(2, specs["sgd"], build_dir, tmp_path / "flip.npz", augment_flip=True)
    assert plain.returncode == 0 and flipped.returncode == 0, flipped.stderr
    a, b = trained(tmp_path / "plain.npz"), trained(tmp_path / "flip.npz")
    assert np.isfinite(b["loss"]).all() and int(b["step"]) == int(a["step"])
    assert not np.array_equal(a["params"], b["params"])  # the flips did reach the batches
    # (the replicas' equality is checked inside the run every check_every steps: verify_replicas)


def test_three_ranks_with_uneven_shards_and_a_rank_without_samples(mpirun, specs, build_dir, tmp_path):
    # 42 samples in batches of 8: shards of 3, 3, 2 and, for the last batch of 2, 1, 1, 0.
    result = run_worker(3, specs["adam"], build_dir, tmp_path / "out.npz", samples=42)
    assert result.returncode == 0, result.stderr
    reference = single_process(specs["adam"], build_dir, samples=42)
    assert reference.step_count == 12
    assert_same_training(trained(tmp_path / "out.npz"), reference)


def emulate_ranks(model, x, y, ranks: int, epochs: int, seed: int) -> None:
    """What `ranks` ranks compute, in one process: shard statistics for batchnorm (each shard keeps
    its own running statistics, averaged at every epoch's end), per-rank dropout seeds, the
    weighted sum of the shards' gradients, one step."""
    trainable, batch = model.num_trainable, model.spec.training["batch_size"]
    running = [model.flat_params[trainable:].copy() for _ in range(ranks)]
    for epoch in range(epochs):
        order = epoch_order(x.shape[0], seed, epoch)  # the shuffle fit takes, on any rank count
        for first in range(0, x.shape[0], batch):
            index = order[first:first + batch]
            total = np.zeros(trainable)
            sizes = [index.size // ranks + (rank < index.size % ranks) for rank in range(ranks)]
            for rank, part in enumerate(np.split(index, np.cumsum(sizes)[:-1])):
                if part.size:
                    model.flat_params[trainable:] = running[rank]
                    model.compute_gradients(x[part], y[part], seed=step_seed(seed, model.step_count, rank, ranks))
                    running[rank] = model.flat_params[trainable:].copy()
                    total += model.flat_grads[:trainable] * (part.size / index.size)
            model.flat_grads[:trainable] = total
            model.apply_step()
        running = [np.mean(running, axis=0)] * ranks
        model.flat_params[trainable:] = running[0]


def run_and_emulate(spec, build_dir, tmp_path, ranks=2, epochs=2):
    result = run_worker(ranks, spec, build_dir, tmp_path / "out.npz", epochs=epochs)
    assert result.returncode == 0, result.stderr
    got = trained(tmp_path / "out.npz")
    emulated = cnncc.compile(spec, build_dir=build_dir).init(7)
    x, y = make_data(emulated, 40)
    emulate_ranks(emulated, x, y, ranks=ranks, epochs=epochs, seed=7)
    assert_same_training(got, emulated)
    np.testing.assert_allclose(got["params"], emulated.flat_params, rtol=0, atol=EQUAL)  # running statistics too
    return got


def test_batchnorm_uses_shard_statistics_and_averages_running_statistics(mpirun, specs, build_dir, tmp_path):
    got = run_and_emulate(specs["batchnorm"], build_dir, tmp_path, epochs=1)
    # Against one process on the whole batch (batch statistics over 8 samples, not 4): the same
    # training, not the same numbers. Stated tolerance, after 5 steps: the trainable weights end
    # within 25% of the distance they travelled from their initial values (measured: 12.4%).
    start = cnncc.compile(specs["batchnorm"], build_dir=build_dir).init(7).flat_params.copy()
    whole = single_process(specs["batchnorm"], build_dir, epochs=1)
    trainable = whole.num_trainable
    travelled = np.linalg.norm(whole.flat_params[:trainable] - start[:trainable])
    apart = np.linalg.norm(got["params"][:trainable] - whole.flat_params[:trainable])
    assert 0 < apart < 0.25 * travelled, (apart, travelled)


def test_dropout_masks_differ_per_rank(mpirun, specs, build_dir, tmp_path):
    """Batchnorm and dropout together, 2 ranks: exactly the emulation with per-rank seeds."""
    run_and_emulate(specs["dropout"], build_dir, tmp_path)


def test_a_checkpoint_of_two_ranks_resumes_in_one_and_in_three(mpirun, specs, build_dir, tmp_path):
    checkpoint = tmp_path / "after1.npz"
    first = run_worker(2, specs["sgd"], build_dir, tmp_path / "two.npz", epochs=1, checkpoint=checkpoint)
    assert first.returncode == 0, first.stderr
    one = single_process(specs["sgd"], build_dir, resume=checkpoint)
    assert one.step_count == 10
    three = run_worker(3, specs["sgd"], build_dir, tmp_path / "three.npz", resume=checkpoint)
    assert three.returncode == 0, three.stderr
    assert_same_training(trained(tmp_path / "three.npz"), one)


def test_diverged_replicas_stop_every_rank_with_a_clear_error(mpirun, specs, build_dir, tmp_path):
    result = run_worker(2, specs["sgd"], build_dir, tmp_path / "out.npz", fault="diverge", check_every=2)
    assert result.returncode != 0
    assert "the replicas diverged: after step 5" in result.stderr and "rank 1 differ from rank 0" in result.stderr
    assert result.stderr.count("DistributedError") == 1  # rank 0 reports; rank 1 stops quietly
    assert not (tmp_path / "out.npz").exists()


def wait_for_exit(process: subprocess.Popen, seconds: float) -> tuple[float, str]:
    start = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the ranks were still running {seconds} s after the fault")
    return time.monotonic() - start, stderr


def test_a_killed_rank_ends_the_job_and_the_checkpoint_stays_loadable(mpirun, specs, build_dir, tmp_path):
    checkpoint, pids = tmp_path / "ck.npz", tmp_path / "pids"
    pids.mkdir()
    process = launch(2, sys.executable, str(WORKER), f"--spec={specs['sgd']}", f"--build-dir={build_dir}",
                     f"--out={tmp_path / 'out.npz'}", "--samples=4000", "--epochs=10000", "--check-every=50",
                     f"--checkpoint={checkpoint}", f"--pid-dir={pids}")
    deadline = time.monotonic() + 120
    while not (checkpoint.exists() and (pids / "rank1").exists()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch
    os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)
    seconds, stderr = wait_for_exit(process, FAULT_SECONDS)
    assert process.returncode != 0 and seconds < FAULT_SECONDS
    assert "exited on signal 9" in stderr, stderr
    model = cnncc.compile(specs["sgd"], build_dir=build_dir).load(checkpoint)
    assert model.loaded_epoch >= 1 and model.step_count == 500 * model.loaded_epoch


def test_a_rank_that_raises_aborts_every_rank_with_its_message(mpirun, specs, build_dir, tmp_path):
    process = launch(2, sys.executable, str(WORKER), f"--spec={specs['sgd']}", f"--build-dir={build_dir}",
                     f"--out={tmp_path / 'out.npz'}", "--fault=raise")
    seconds, stderr = wait_for_exit(process, FAULT_SECONDS)
    assert process.returncode != 0 and seconds < FAULT_SECONDS
    assert "cnncc: rank 1 of 2: error: RuntimeError: injected failure on this rank; aborting every rank" in stderr


def test_a_hung_rank_is_caught_by_the_watchdog(mpirun, specs, build_dir, tmp_path):
    process = launch(2, sys.executable, str(WORKER), f"--spec={specs['sgd']}", f"--build-dir={build_dir}",
                     f"--out={tmp_path / 'out.npz'}", "--fault=hang", "--timeout=3")
    seconds, stderr = wait_for_exit(process, FAULT_SECONDS)
    assert process.returncode != 0 and seconds < FAULT_SECONDS
    assert "no collective operation finished for 3 s" in stderr, stderr


def test_mpirun_cnncc_train_matches_one_process_and_only_rank_0_prints(mpirun, specs, build_dir, tmp_path):
    common = [str(specs["sgd"]), "--limit=40", "--epochs=2", f"--build-dir={build_dir}", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "cnncc", "train", *common, f"--out={tmp_path / 'one.npz'}"],
                            env=mpi_env(), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert single.returncode == 0, single.stderr
    process = launch(2, sys.executable, "-m", "cnncc", "train", *common, f"--out={tmp_path / 'two.npz'}",
                     f"--checkpoint={tmp_path / 'ck.npz'}")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert stdout.count("saved weights to") == 1 and stdout.count("parameter memory") == 1
    assert "on 2 MPI ranks" in stdout
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in one.files:
        if not key.startswith("__"):
            np.testing.assert_allclose(two[key], one[key], rtol=0, atol=EQUAL)

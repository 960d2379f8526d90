"""Training results pinned bit for bit: every example spec (and small nets for the other losses
and optimizers) trains a few steps from a fixed start, and the digest of the weights, the
optimizer state and the outputs must equal the stored one. Refactors of the compiler must not
change a single bit; a deliberate change of the numerics refreshes the file in review:

    CNNCC_REFRESH_GOLDEN=1 python -m pytest -q tests/test_digests.py

The build uses fixed, machine-independent flags (no -march=native, no FMA contraction), so the
digest is the same on every x86-64 machine with an IEEE C compiler.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import cnncc
from build_flags import BASELINE_WERROR

ROOT = Path(__file__).resolve().parent.parent
DIGESTS = Path(__file__).resolve().parent / "golden" / "digests.json"
STEPS = 3

SMALL_NETS = {
    "mse_sgd": {"name": "mse_sgd", "dtype": "float64", "input": {"channels": 2, "height": 6, "width": 6},
                "layers": [{"type": "conv2d", "filters": 3, "kernel": 3, "padding": "same", "activation": "tanh"},
                           {"type": "batchnorm"}, {"type": "avgpool2d", "kernel": 2},
                           {"type": "flatten"}, {"type": "dense", "units": 4}],
                "loss": "mse", "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.5, "weight_decay": 0.01}},
    "bce_adam": {"name": "bce_adam", "dtype": "float32", "input": {"channels": 1, "length": 12},
                 "layers": [{"type": "conv1d", "filters": 4, "kernel": 3, "activation": "leaky_relu"},
                            {"type": "maxpool1d", "kernel": 2}, {"type": "dropout", "rate": 0.25},
                            {"type": "flatten"}, {"type": "dense", "units": 3, "activation": "sigmoid"}],
                 "loss": "binary_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}},
}


def _cases():
    cases = {path.stem: str(path) for path in sorted((ROOT / "specs").glob("*.yaml"))}
    cases.update(SMALL_NETS)
    return cases


def _digest(spec, build_dir) -> str:
    model = cnncc.compile(spec, build_dir=build_dir, cflags=BASELINE_WERROR)
    if model.program.loss is None:
        pytest.skip("an inference-only spec has no training to pin")
    model.init(seed=7)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5,) + tuple(model.input_shape))
    loss = model.program.loss
    if loss.takes_labels:
        y = rng.integers(0, loss.classes, 5)
    else:
        y = rng.random((5,) + tuple(model.output_shape))
    digest = hashlib.sha256()
    for step in range(STEPS):
        digest.update(np.float64(model.train_step(x, y, seed=step + 1)).tobytes())
    state = model.state()
    for key in sorted(state):
        digest.update(key.encode() + np.ascontiguousarray(state[key]).tobytes())
    digest.update(model.predict(x).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(_cases()))
def test_training_digest_is_unchanged(case, build_dir):
    got = _digest(_cases()[case], build_dir)
    stored = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
    if os.environ.get("CNNCC_REFRESH_GOLDEN") == "1":
        stored[case] = got
        DIGESTS.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + "\n")
        return
    assert case in stored, f"no stored digest for '{case}': refresh with CNNCC_REFRESH_GOLDEN=1 (see the docstring)"
    assert got == stored[case], f"'{case}' trains to different bits than the stored digest"

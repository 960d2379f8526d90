"""`cnncc gradcheck` passes correct, real-looking networks (relu kinks, biases before batchnorm,
maxpool switches included) and fails a deliberately broken backward."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.cli import main as cli_main
from cnncc.gradcheck import check_tensors, random_batch, redundant_biases

ROOT = Path(__file__).resolve().parents[1]

MOBILENET = {"name": "gc_mobilenet", "dtype": "float64", "input": {"channels": 3, "height": 12, "width": 12},
             "layers": [{"name": "stem", "type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "padding": "same"},
                        {"name": "stem_bn", "type": "batchnorm"}, {"type": "relu"},
                        {"name": "dw", "type": "conv2d", "filters": 8, "kernel": 3, "groups": 8, "padding": 1},
                        {"name": "dw_bn", "type": "batchnorm"}, {"type": "relu"},
                        {"name": "pw", "type": "conv2d", "filters": 16, "kernel": 1},
                        {"name": "pw_bn", "type": "batchnorm"}, {"type": "relu"},
                        {"type": "global_avgpool"}, {"type": "flatten"},
                        {"name": "head", "type": "dense", "units": 5}],
             "loss": "softmax_cross_entropy"}
RESIDUAL = {"name": "gc_residual", "dtype": "float64", "input": {"channels": 4, "height": 8, "width": 8},
            "layers": [{"name": "a", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "activation": "relu"},
                       {"name": "b", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
                       {"name": "b_bn", "type": "batchnorm"},
                       {"name": "sum", "type": "add", "inputs": ["b_bn", "a"]}, {"type": "relu"},
                       {"type": "maxpool2d", "kernel": 2}, {"type": "flatten"},
                       {"name": "out", "type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy"}
SIGNAL = {"name": "gc_signal", "dtype": "float64", "input": {"channels": 2, "length": 32},
          "layers": [{"name": "c1", "type": "conv1d", "filters": 6, "kernel": 5, "activation": "relu"},
                     {"type": "maxpool1d", "kernel": 2},
                     {"name": "c2", "type": "conv1d", "filters": 6, "kernel": 3, "dilation": 2, "activation": "relu"},
                     {"type": "flatten"}, {"type": "dropout", "rate": 0.2},
                     {"name": "out", "type": "dense", "units": 2}],
          "loss": "softmax_cross_entropy"}


@pytest.mark.parametrize("backend", ["vector", "portable"])
@pytest.mark.parametrize("spec", [MOBILENET, RESIDUAL, SIGNAL], ids=lambda s: s["name"])
def test_real_looking_networks_pass(spec, backend, build_dir):
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",), backend=backend).init(0)
    x, y = random_batch(model, 4, np.random.default_rng(0))
    results = check_tensors(model, x, y, samples=12)
    for key, result in results.items():
        assert result.error <= 1e-6, (key, result)
        assert result.checked + result.skipped_kinks == min(12, model.params[key].size)
    # Kinks are skipped, not hidden: most entries are still checked, and some of every tensor
    # (tiny images make ties at relu's 0 common: 40% of MobileNet's early entries sit near one).
    checked = sum(r.checked for r in results.values())
    assert checked >= 0.5 * sum(r.checked + r.skipped_kinks for r in results.values())
    assert all(r.checked for r in results.values())


def test_the_redundant_bias_is_named():
    spec = cnncc.load_spec(MOBILENET)
    assert redundant_biases(spec) == ["stem", "dw", "pw"]
    assert redundant_biases(cnncc.load_spec(SIGNAL)) == []


def test_lenet5_passes_on_the_command_line(build_dir, capsys):
    code = cli_main(["gradcheck", str(ROOT / "specs" / "lenet5.yaml"), "--samples", "5", "--build-dir", str(build_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed" in out


def test_a_broken_backward_fails(build_dir, monkeypatch, capsys):
    """A backward that is wrong by 1% in one entry of one tensor (and right everywhere else)."""
    real = cnncc.Model.gradients

    def broken(self, x, y, seed=0):
        loss, grads = real(self, x, y, seed)
        flat = grads["b.weight"].reshape(-1)
        flat[:] = flat * 1.01
        return loss, grads

    model = cnncc.compile(RESIDUAL, build_dir=build_dir, cflags=("-O1",)).init(0)
    x, y = random_batch(model, 4, np.random.default_rng(0))
    monkeypatch.setattr(cnncc.Model, "gradients", broken)
    results = check_tensors(model, x, y, samples=12)
    assert results["b.weight"].error > 1e-3
    assert all(r.error <= 1e-6 for key, r in results.items() if key != "b.weight")

"""The MLPerf Tiny specs: exact Keras parameter counts, and their int8 figures within the targets
(ResNet-8 arena <= 60 KB, DS-CNN arena <= 24 KB), quantized end to end at batch 1."""
from pathlib import Path

import numpy as np
import pytest

import cnncc
from cnncc.quantize.cli import int8_figures

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.mark.parametrize("name, params, arena_limit", [("resnet8", 78_666, 60_000), ("ds_cnn", 24_908, 24_000)])
def test_mlperf_tiny_specs_counts_and_int8_arena(name, params, arena_limit):
    assert cnncc.check(SPECS / f"{name}.yaml").totals["params"] == params
    assert int8_figures(SPECS / f"{name}.yaml")["int8_arena_bytes"] <= arena_limit


def test_ds_cnn_quantizes_bit_exact(build_dir):
    model = cnncc.compile(SPECS / "ds_cnn.yaml", build_dir=build_dir).init(0)
    x = np.random.default_rng(0).normal(size=(24, 1, 49, 10)).astype(np.float32)
    q = model.quantize(x[:16], build_dir=build_dir)
    x_q = q.quantize_input(x[16:])
    assert np.array_equal(q.predict_int8(x_q).reshape(len(x_q), -1), q.reference(x_q)[q.graph.output])
    assert [op.kind for op in q.graph.ops].count("conv") == 9  # batchnorm and relu folded into every conv

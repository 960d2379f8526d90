"""The int8 C kernels equal the NumPy integer reference bit for bit, for every supported kind and
option: strides, padding (same included), dilation, groups and depthwise, pools with padding,
residual add and concat of inputs with different scales, table activations. Compiled with
-std=c99 -pedantic-errors -Wall -Wextra -Werror -Wconversion."""
import numpy as np
import pytest

from quant_cases import ADD_CONCAT_TABLES, assert_bit_exact, int8_case, single_spec



def _random_conv(rng):
    groups = int(rng.choice([1, 2, 4]))
    c_in = groups * int(rng.integers(1, 4))
    filters = groups * int(rng.integers(1, 5))
    kernel = [int(rng.integers(1, 5)), int(rng.integers(1, 5))]
    stride = [int(rng.integers(1, 4)), int(rng.integers(1, 3))]
    dilation = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    padding = "same" if rng.random() < 0.3 else [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
    h, w = int(rng.integers(8, 15)), int(rng.integers(8, 15))
    layer = {"name": "conv", "type": "conv2d", "filters": filters, "kernel": kernel, "stride": stride,
             "dilation": dilation, "padding": padding, "groups": groups,
             "bias": bool(rng.random() < 0.8), "activation": str(rng.choice(["linear", "relu"]))}
    return (c_in, h, w), layer


@pytest.mark.parametrize("seed", range(8))
def test_random_conv2d_is_bit_exact(seed, build_dir):
    rng = np.random.default_rng(seed)
    shape, layer = _random_conv(rng)
    assert_bit_exact(int8_case(single_spec(shape, layer), build_dir, seed), seed=seed)


@pytest.mark.parametrize("options", [
    {"kernel": 3, "padding": "same", "dilation": 2, "stride": 1},
    {"kernel": 5, "padding": 2, "stride": 2, "groups": 2},
])
def test_conv1d_is_bit_exact(options, build_dir):
    layer = {"name": "conv", "type": "conv1d", "filters": 4, **options}
    assert_bit_exact(int8_case(single_spec((4, 23), layer), build_dir))


def test_depthwise_with_batchnorm_and_relu_is_bit_exact(build_dir):
    spec = single_spec((6, 11, 9),
                   {"name": "dw", "type": "conv2d", "filters": 6, "groups": 6, "kernel": 3, "padding": "same",
                    "stride": 2, "bias": False},
                   {"name": "bn", "type": "batchnorm"}, {"name": "act", "type": "relu"})
    q = int8_case(spec, build_dir)
    assert [op.layers for op in q.graph.ops] == [("dw", "bn", "act")]
    assert_bit_exact(q)


@pytest.mark.parametrize("pool", [
    {"type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
    {"type": "maxpool2d", "kernel": [2, 3], "stride": [2, 1]},
    {"type": "avgpool2d", "kernel": 3, "stride": 2, "padding": 1},
    {"type": "avgpool2d", "kernel": [3, 2], "stride": 1, "padding": "same"},
])
def test_pools_are_bit_exact(pool, build_dir):
    spec = single_spec((3, 9, 10), {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 1}, {"name": "pool", **pool})
    assert_bit_exact(int8_case(spec, build_dir))


def test_residual_add_concat_global_pool_and_tables_are_bit_exact(build_dir):
    spec = ADD_CONCAT_TABLES
    q = int8_case(spec, build_dir)
    kinds = [op.kind for op in q.graph.ops]
    assert kinds == ["conv", "conv", "conv", "lut", "add", "lut", "lut", "concat", "global_avgpool", "dense"]
    assert q.graph.ops[4].clamp == "relu" and q.graph.dropped_softmax == "probabilities"
    assert_bit_exact(q)


def test_signal_pools_and_dense_tanh_are_bit_exact(build_dir):
    spec = single_spec((2, 30),
                   {"name": "conv", "type": "conv1d", "filters": 3, "kernel": 3, "dilation": 2, "padding": 2},
                   {"name": "mp", "type": "maxpool1d", "kernel": 3, "stride": 2, "padding": 1},
                   {"name": "ap", "type": "avgpool1d", "kernel": 2},
                   {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
                   {"name": "fc", "type": "dense", "units": 6, "activation": "tanh"})
    assert_bit_exact(int8_case(spec, build_dir))

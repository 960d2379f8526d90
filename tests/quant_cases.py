"""Building int8 models straight from a spec with random weights and random tensor ranges (no
float model, no calibration), so the kernel tests compile only the int8 C."""
from __future__ import annotations

import numpy as np

from cnncc.check import check_net
from cnncc.quantize.graph import build_graph
from cnncc.quantize.layout import plan_layout
from cnncc.quantize.model import QuantizedModel
from cnncc.quantize.scheme import quantize_values
from cnncc.spec import load_spec

STRICT = ("-O2", "-std=c99", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wshadow")


def random_params(net, rng) -> dict[str, np.ndarray]:
    params = {}
    for layer in net.layers:
        for decl in layer.params:
            key = f"{layer.name}.{decl.name}"
            if decl.name == "running_var":
                params[key] = rng.uniform(0.2, 2.0, decl.shape)
            elif decl.name == "gamma":
                params[key] = rng.uniform(0.5, 1.5, decl.shape) * rng.choice([-1, 1], decl.shape)
            else:
                scale = 1.0 / np.sqrt(max(1, decl.fan_in)) if decl.name == "weight" else 0.3
                params[key] = rng.normal(0.0, scale, decl.shape)
    return params


def random_ranges(graph, rng) -> dict[str, tuple[float, float]]:
    """A different, plausible range per tensor (so add and concat see inputs of different scales)."""
    ranges = {}
    for name in graph.tensors:
        span = float(rng.uniform(0.5, 6.0))
        low = -float(rng.uniform(0.0, 1.0)) * span
        ranges[name] = (low, low + span)
    return ranges


def int8_parts(spec, seed: int = 0, kernel_set: str = "portable"):
    """(spec, graph, layout, values) of the spec with random weights and ranges, nothing built."""
    spec = load_spec(spec)
    rng = np.random.default_rng(seed)
    net = check_net(spec)
    graph = build_graph(net)
    layout = plan_layout(graph, kernel_set)
    return spec, graph, layout, quantize_values(graph, layout, random_params(net, rng), random_ranges(graph, rng))


def int8_case(spec, build_dir, seed: int = 0, cflags=STRICT, kernel_set: str = "portable"):
    """A QuantizedModel of the spec, its kernels planned by `kernel_set` (the portable ones by default, so
    that the tests of those run them; QuantizedModel's own constructors plan the host's vector set)."""
    spec, graph, layout, values = int8_parts(spec, seed, kernel_set)
    return QuantizedModel(spec, graph, layout, values, build_dir=build_dir, cflags=cflags)


def random_int8(shape, n, seed=0) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(-128, 128, (n,) + tuple(shape)).astype(np.int8)


def assert_bit_exact(qmodel, n: int = 3, seed: int = 0):
    x = random_int8(qmodel.input_shape, n, seed)
    c = qmodel.predict_int8(x).reshape(n, -1)
    ref = qmodel.reference(x)[qmodel.graph.output]
    mismatches = int((c != ref).sum())
    assert mismatches == 0, f"{mismatches} of {c.size} int8 outputs differ from the integer reference"
    # the output saturating everywhere would prove little: the data must exercise the range
    assert len(np.unique(c)) > min(8, c.size // 2)


def single_spec(input_shape, *layers) -> dict:
    """A spec named `single` of these layers on an input of shape (C, H, W) or (C, L)."""
    c = input_shape[0]
    shape = ({"channels": c, "height": input_shape[1], "width": input_shape[2]} if len(input_shape) == 3
             else {"channels": c, "length": input_shape[1]})
    return {"name": "single", "input": shape, "layers": list(layers)}


# three branches off the input, a 3-input add with a relu, two lookup tables (sigmoid,
# leaky_relu), a concat of inputs at different scales, a global pool, a dense and a softmax
ADD_CONCAT_TABLES = single_spec(
    (3, 8, 8),
    {"name": "a", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
    {"name": "b", "type": "conv2d", "filters": 4, "kernel": 1, "inputs": ["input"]},
    {"name": "c", "type": "conv2d", "filters": 4, "kernel": 1, "inputs": ["input"], "activation": "tanh"},
    {"name": "sum", "type": "add", "inputs": ["a", "b", "c"]},
    {"name": "sum_relu", "type": "relu"},
    {"name": "sig", "type": "sigmoid", "inputs": ["b"]},
    {"name": "leaky", "type": "leaky_relu", "alpha": 0.1, "inputs": ["a"]},
    {"name": "joined", "type": "concat", "inputs": ["sum_relu", "sig", "leaky"]},
    {"name": "pooled", "type": "global_avgpool"},
    {"name": "fc", "type": "dense", "units": 5},
    {"name": "probabilities", "type": "softmax"})

"""The float boundary in the generated int8 model (NAME_quantize_input, NAME_dequantize_output,
NAME_predict), against Python's (cnncc/quantize/boundary.py): the quantization is
clamp(round(x / scale) + zero) in double, rounding half away from zero; the C computes it with
float32 arithmetic and the 255 input thresholds, and must give the same int8 on every float32,
above all on each threshold and the float32 on either side of it, where the rounding decides."""
from dataclasses import replace

import numpy as np
import pytest

from cnncc.quantize.boundary import dequantize_real, input_thresholds, quantize_real
from cnncc.quantize.model import QuantizedModel
from quant_cases import int8_case, single_spec

SPEC = single_spec((2, 6, 6), {"name": "conv", "type": "conv2d", "filters": 3, "kernel": 3, "padding": 1},
                   {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 4})


def _with_input(q: QuantizedModel, scale: float, zero: int, build_dir) -> QuantizedModel:
    """The same model with another input scale and zero point (the boundary is all that changes)."""
    values = replace(q.values, scales={**q.values.scales, q.graph.input: scale},
                     zero_points={**q.values.zero_points, q.graph.input: zero})
    return QuantizedModel(q.spec, q.graph, q.layout, values, build_dir=build_dir)


def _inputs(q: QuantizedModel, rng) -> np.ndarray:
    """Every threshold and its float32 neighbours, values around the whole int8 range and beyond it,
    the extremes of float32, zeros, subnormals."""
    scale, zero = q.values.scales[q.graph.input], q.values.zero_points[q.graph.input]
    t = input_thresholds(scale, zero)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3.4028235e38, -3.4028235e38], np.float32)
    spread = (rng.standard_normal(4000) * 150 * scale).astype(np.float32)
    return np.concatenate([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf)),
                           special, spread, spread * 1e6]).astype(np.float32)


# the portable kernel set's float32 threshold search (the emitted C), and the host's vector set's
# quotient in double
@pytest.mark.parametrize("kernel_set", ["portable", "vector"])
@pytest.mark.parametrize("scale, zero", [(None, None), (0.0123, -128), (0.7, 127), (1e-7, 3), (3e5, -5)],
                         ids=["calibrated", "all positive", "all negative", "tiny scale", "huge scale"])
def test_quantize_input_in_c_equals_python_on_every_threshold(scale, zero, kernel_set, build_dir):
    q = int8_case(SPEC, build_dir, seed=3, cflags=None, kernel_set=kernel_set)
    if scale is not None:
        q = _with_input(q, scale, zero, build_dir)
    rng = np.random.default_rng(7)
    x = _inputs(q, rng)
    scale, zero = q.values.scales[q.graph.input], q.values.zero_points[q.graph.input]
    c = np.empty(x.size, np.int8)
    ffi = q.module.ffi
    q.module.lib.single_quantize_input(ffi.from_buffer("int8_t[]", c), ffi.from_buffer("float[]", x), x.size,
                                       ffi.from_buffer("float[]", input_thresholds(scale, zero)))
    expected = quantize_real(x, scale, zero)
    assert np.array_equal(c, expected), f"{int((c != expected).sum())} of {x.size} differ"
    assert len(np.unique(expected)) == 256  # every level is reached, both clamps included


def test_predict_in_c_equals_the_python_boundary(build_dir):
    q = int8_case(SPEC, build_dir, seed=4, cflags=None)
    x = np.random.default_rng(5).standard_normal((6,) + tuple(q.input_shape)).astype(np.float32) * 3
    python = q.dequantize_output(q.predict_int8(q.quantize_input(x)))
    assert np.array_equal(q.predict(x), python)
    assert np.array_equal(q.predict(x.astype(np.float64)), python)  # the Python path, for other dtypes
    levels = np.arange(-128, 128, dtype=np.int8)
    y = np.empty(256, np.float32)
    table = dequantize_real(levels, q.values.scales[q.graph.output], q.values.zero_points[q.graph.output])
    ffi = q.module.ffi
    q.module.lib.single_dequantize_output(ffi.from_buffer("float[]", y), ffi.from_buffer("int8_t[]", levels), 256,
                                          ffi.from_buffer("float[]", table))
    assert np.array_equal(y, q.dequantize_output(levels))
    with pytest.raises(ValueError, match="NaN or infinite"):
        q.predict(np.where(x > 4, np.float32(np.inf), x))
    # the check is C's all_finite: each kind of non-finite value at the first and the last element,
    # and the largest finite float32 passes it
    for index in (0, -1):
        for value in (np.nan, np.inf, -np.inf):
            bad = x.copy()
            bad.flat[index] = value
            with pytest.raises(ValueError, match="NaN or infinite"):
                q.predict(bad)
    ffi = q.module.ffi
    extremes = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 0, np.inf], np.float32)
    assert q.module.lib.single_all_finite(ffi.from_buffer("float[]", extremes), 3) == 1
    assert q.module.lib.single_all_finite(ffi.from_buffer("float[]", extremes), 4) == 0
    with pytest.raises(ValueError, match="input must be"):
        q.predict(x[:, :1])

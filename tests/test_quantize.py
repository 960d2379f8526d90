"""The int8 path from Python: the fixed-point arithmetic against hand-worked TFLite values, the
scheme, Model.quantize end to end, the report, save/load (atomic, validated) and refusals."""
import numpy as np
import pytest

import cnncc
from cnncc.quantize import QuantizeError, QuantizedModel, arith
from cnncc.quantize.scheme import choose_params

SPEC = {"name": "qsmall", "input": {"channels": 1, "height": 12, "width": 12},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "bias": False},
                   {"name": "bn1", "type": "batchnorm"}, {"name": "relu1", "type": "relu"},
                   {"name": "pool", "type": "maxpool2d", "kernel": 2}, {"type": "flatten"},
                   {"name": "fc", "type": "dense", "units": 5}],
        "loss": "softmax_cross_entropy"}


def test_fixed_point_arithmetic_matches_tflite_worked_values():
    assert arith.quantize_multiplier(0.5) == (1 << 30, 0)
    assert arith.quantize_multiplier(0.25) == (1 << 30, -1)
    assert arith.quantize_multiplier(1.5) == (3 << 29, 1)
    assert arith.quantize_multiplier(0.0) == (0, 0)
    # srdhm rounds to nearest and saturates INT32_MIN * INT32_MIN
    assert arith.srdhm(1 << 30, 1 << 30) == 1 << 29
    # ties: +1.5 -> 2 but -1.5 -> -1 and -2.5 -> -2 (the negative nudge is 1 - 2^30, as TFLite's)
    assert arith.srdhm(3, 1 << 30) == 2 and arith.srdhm(-3, 1 << 30) == -1 and arith.srdhm(-5, 1 << 30) == -2
    assert arith.srdhm(arith.INT32_MIN, arith.INT32_MIN) == arith.INT32_MAX
    assert list(arith.rdbpot(np.array([5, -5, 6, -6, 7, -7]), 1)) == [3, -3, 3, -3, 4, -4]
    assert list(arith.rounded_divide(np.array([5, -5, 4, -4]), 2)) == [3, -3, 2, -2]
    # requantize(x, quantize_multiplier(m)) ~ round(x * m) for a factor below one
    m, s = arith.quantize_multiplier(0.3)
    xs = np.arange(-1000, 1000)
    assert np.abs(arith.requantize(xs, m, s) - np.round(xs * 0.3)).max() <= 1


def test_tensor_parameters_hold_zero_exactly():
    scale, zero = choose_params(-1.0, 3.0)
    assert scale == pytest.approx(4.0 / 255) and -128 <= zero <= 127
    assert scale * (zero - zero) == 0.0
    assert choose_params(0.5, 2.0)[1] == -128  # the range widens to contain 0


@pytest.fixture(scope="module")
def trained(build_dir):
    model = cnncc.compile(SPEC, build_dir=build_dir).init(1)
    rng = np.random.default_rng(0)
    for key in ("bn1.running_mean", "bn1.beta"):
        model.params[key][...] = rng.normal(0, 0.2, 4)
    model.params["bn1.running_var"][...] = rng.uniform(0.5, 2.0, 4)
    x = rng.normal(size=(200, 1, 12, 12)).astype(np.float32)
    return model, x


def test_quantized_model_is_close_to_float_and_bit_exact(trained, build_dir):
    model, x = trained
    q = model.quantize(x[:150], build_dir=build_dir)
    assert isinstance(q, QuantizedModel)
    assert [op.layers for op in q.graph.ops] == [("conv1", "bn1", "relu1"), ("pool",), ("fc",)]
    out, ref = q.predict(x[150:]), model.predict(x[150:])
    step = q.values.scales[q.graph.output]
    assert np.abs(out - ref).max() < 12 * step
    x_q = q.quantize_input(x[150:])
    assert np.array_equal(q.predict_int8(x_q).reshape(len(x_q), -1), q.reference(x_q)[q.graph.output])
    labels = ref.argmax(axis=1)
    result = q.evaluate(x[150:], labels, float_model=model)
    assert result["float_accuracy"] == 1.0 and result["agreement"] == result["accuracy"] >= 0.8
    report = q.report()
    text = report.to_text()
    assert "conv1+bn1+relu1" in text and "SQNR" in text
    assert report.weight_bytes == 4 * 9 + 4 * 12 + 5 * 144 + 4 * 15  # int8 weights + int32 bias, multiplier, shift
    for row in report.rows:
        assert row.errors["sqnr_db"] > 20 and row.errors["rmse"] <= row.errors["max_abs"]


def test_percentile_calibration_clips_outliers(trained, build_dir):
    model, x = trained
    spiky = x[:150].copy()
    spiky[0, 0, 0, 0] = 1000.0
    wide = model.quantize(spiky, build_dir=build_dir)
    clipped = model.quantize(spiky, method="percentile", percentile=99.9, build_dir=build_dir)
    assert clipped.values.scales["input"] < wide.values.scales["input"] / 50
    with pytest.raises(QuantizeError, match="method"):
        model.quantize(x, method="entropy")


def test_save_and_load_round_trip_and_validation(trained, build_dir, tmp_path):
    model, x = trained
    q = model.quantize(x[:100], build_dir=build_dir)
    path = tmp_path / "q.npz"
    q.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["q.npz"]  # no temporary left behind
    loaded = QuantizedModel.load(path, SPEC, build_dir=build_dir)
    assert np.array_equal(loaded.predict(x[100:]), q.predict(x[100:]))
    assert loaded.report().to_dict() == q.report().to_dict()

    with np.load(path) as data:
        arrays = dict(data)

    def broken(**changes):
        bad = tmp_path / "bad.npz"
        np.savez(bad, **{**arrays, **changes})
        return bad

    with pytest.raises(QuantizeError, match="zero point"):
        QuantizedModel.load(broken(zero_points=np.full_like(arrays["zero_points"], 300)), SPEC)
    with pytest.raises(QuantizeError, match="scale"):
        QuantizedModel.load(broken(scales=-arrays["scales"]), SPEC)
    with pytest.raises(QuantizeError, match="weights"):
        QuantizedModel.load(broken(weights=arrays["weights"][:-1]), SPEC)
    words = arrays["words"].copy()
    words[-1] = 99  # the last op's last shift
    with pytest.raises(QuantizeError, match="shift"):
        QuantizedModel.load(broken(words=words), SPEC)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(QuantizeError, match="corrupt or truncated"):
        QuantizedModel.load(truncated, SPEC)
    other = dict(SPEC, layers=SPEC["layers"][:-1] + [{"name": "fc", "type": "dense", "units": 6}])
    with pytest.raises(QuantizeError, match="differs"):
        QuantizedModel.load(path, other)


@pytest.mark.parametrize("layers, message", [
    ([{"name": "pool", "type": "maxpool2d", "kernel": 2}, {"name": "bn", "type": "batchnorm"}],
     "layer 'bn' .*folds batchnorm"),
    ([{"name": "c", "type": "conv2d", "filters": 2, "kernel": 1}, {"name": "sm", "type": "softmax"},
      {"name": "d", "type": "conv2d", "filters": 2, "kernel": 1}], "layer 'sm' .*only as the last layer"),
    ([{"type": "flatten"}, {"name": "fc", "type": "dense", "units": 3, "activation": "softmax"}],
     "layer 'fc' .*fused softmax"),
])
def test_unsupported_networks_are_refused_naming_the_layer(layers, message):
    from cnncc.check import check_net
    from cnncc.quantize import build_graph
    from cnncc.spec import load_spec

    spec = {"name": "refused", "input": {"channels": 2, "height": 4, "width": 4}, "layers": layers}
    with pytest.raises(QuantizeError, match=message):
        build_graph(check_net(load_spec(spec)))

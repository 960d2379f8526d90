"""conv_transpose2d, upsample2d and global_maxpool beyond the layer table (tests/test_layers.py
checks them against the NumPy reference and finite differences like every kind): the compiled
kernels against PyTorch in float64, the report of the MNIST autoencoder by hand, its training
with `training: {targets: input}`, and the errors of their fields.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import cnncc
import reference as ref
import test_layers as table
from cnncc import SpecError
from cnncc.train_cli import load_data
from tools import need_module

NEW_KINDS = ("conv_transpose2d", "upsample2d", "global_maxpool")
TOL_FORWARD = 1e-12
TOL_BACKWARD = 1e-10


SPEC = Path(__file__).resolve().parents[1] / "specs" / "mnist_autoencoder.yaml"


# ---------------------------------------------------------------------------------------
# against PyTorch: the table's cases of the new kinds, in their compiled group models
# ---------------------------------------------------------------------------------------

def torch_layer(torch, case, params, in_channels):
    """The PyTorch module computing the case's layer, with the C model's parameters."""
    layer = case.layer
    pair = table._pair
    if case.kind == "conv_transpose2d":
        module = torch.nn.ConvTranspose2d(
            in_channels, layer["filters"], pair(layer["kernel"]), pair(layer.get("stride", 1)),
            pair(layer.get("padding", 0)), pair(layer.get("output_padding", 0)), groups=layer.get("groups", 1),
            bias=layer.get("bias", True), dilation=pair(layer.get("dilation", 1))).double()
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(params[f"{case.id}.weight"].astype(np.float64)))
            if layer.get("bias", True):
                module.bias.copy_(torch.from_numpy(params[f"{case.id}.bias"].astype(np.float64)))
        activation = {"linear": lambda z: z, "relu": torch.relu, "sigmoid": torch.sigmoid}[
            layer.get("activation", "linear")]
        return module, lambda x: activation(module(x))
    if case.kind == "upsample2d":
        mode = layer.get("mode", "nearest")
        module = torch.nn.Upsample(scale_factor=tuple(float(s) for s in pair(layer["scale_factor"])), mode=mode,
                                   align_corners=False if mode == "bilinear" else None)
        return module, module
    assert case.kind == "global_maxpool", case.kind
    module = torch.nn.AdaptiveMaxPool2d(1) if len(case.shape) == 3 else torch.nn.AdaptiveMaxPool1d(1)
    return module, lambda x: module(x).flatten(1)


def group_against_torch(torch, shape, build_dir):
    """Every new-kind case of the table's float64 group model of `shape`: (case id, what, error)."""
    cases = table.GROUPS[shape]
    m = cnncc.compile(table.group_spec(cases, "float64", "pre", table.group_name(shape, "float64", "pre")),
                      build_dir=build_dir, cflags=table.MODES[("float64", "pre")])  # test_layers' build
    rng = np.random.default_rng(table.stable_seed("torch", shape))
    table.set_random_params(m, rng)
    xs = table.kink_safe(rng, (table.N,) + shape)
    x, n = table.network_input(shape, xs), table.N
    m.loss(x, np.zeros((n,) + tuple(m.output_shape)), training=True, seed=table.SEED)
    y_final = m.last_output(n).astype(np.float64).copy()
    targets = y_final - table.RESIDUAL * rng.standard_normal(y_final.shape)
    g_final = 2 * (y_final - targets) / y_final.size  # the output gradient the C loss computes
    _, grads = m.gradients(x, targets, seed=table.SEED)
    errors, offset = [], 0
    for case in cases:
        final = table.read(m, f"{case.id}_after" if case.after else case.id, n, xs)
        size = final[0].size
        g = g_final[:, offset:offset + size]
        offset += size
        if case.kind not in NEW_KINDS:
            continue
        inp = torch.from_numpy(table.read(m, f"{case.id}_pre0", n, xs).astype(np.float64)).requires_grad_()
        module, apply = torch_layer(torch, case, m.params, inp.shape[1])
        y = apply(inp)
        errors.append((case.id, "forward", table.rel_err(table.read(m, case.id, n, xs), y.detach().numpy())))
        y.backward(torch.from_numpy(g.reshape(y.shape)))
        errors.append((case.id, "input gradient",
                       table.rel_err(m.activation(f"{case.id}_pre0", n, grad=True), inp.grad.numpy())))
        for name, tensor in module.named_parameters():
            errors.append((case.id, f"{name} gradient", table.rel_err(grads[f"{case.id}.{name}"], tensor.grad.numpy())))
    return errors


@pytest.mark.parametrize("shape", sorted({c.shape for c in table.CASES if c.kind in NEW_KINDS}), ids=table.shape_tag)
def test_compiled_kernels_match_pytorch(shape, build_dir):
    torch = need_module("torch", "pip install torch==2.13.0")
    errors = group_against_torch(torch, shape, build_dir)
    kinds = {c.kind for c in table.GROUPS[shape] if c.kind in NEW_KINDS}
    assert errors and kinds
    for case_id, what, err in errors:
        tol = TOL_FORWARD if what == "forward" else TOL_BACKWARD
        assert err <= tol, f"{case_id} {what} against PyTorch: relative error {err:.3g}"


def test_every_new_kind_is_compared_with_pytorch():
    assert {c.kind for c in table.CASES if c.kind in NEW_KINDS} == set(NEW_KINDS)


def test_global_maxpool_ties_go_to_the_first_maximum_as_in_maxpool_and_pytorch(build_dir):
    torch = need_module("torch", "pip install torch==2.13.0")
    spec = {"name": "gmp_ties", "input": {"channels": 2, "height": 3, "width": 4}, "dtype": "float64",
            "layers": [{"name": "pre", "type": "leaky_relu", "alpha": 1.0},
                       {"name": "gmp", "type": "global_maxpool"},
                       {"name": "pool", "type": "maxpool2d", "kernel": [3, 4], "inputs": ["pre"]},
                       {"type": "flatten"}, {"name": "both", "type": "concat", "inputs": ["gmp", "flatten_1"]}],
            "loss": "mse"}
    m = cnncc.compile(spec, build_dir=build_dir)
    x = np.zeros((2, 2, 3, 4))
    x[0, 0] = 1.0  # all equal
    x[0, 1, [0, 2], [3, 1]] = 5.0  # two maxima: (0, 3) comes first in row-major order
    x[1] = np.random.default_rng(3).integers(0, 2, (2, 3, 4))
    y = m.forward(x)
    targets = y - 0.25
    m.gradients(x, targets)
    g = 2 * 0.25 / y.size
    din = m.activation("pre", 2, grad=True)
    # the global max pool's and the 3x4 max pool's gradients land on the same cell, the first maximum
    expected = 2 * ref.global_maxpool_backward(np.full((2, 2), g), x)
    np.testing.assert_array_equal(din, expected)
    assert din[0, 1, 0, 3] == 2 * g and din[0, 1, 2, 1] == 0 and din[0, 0, 0, 0] == 2 * g
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.AdaptiveMaxPool2d(1)(xt).sum().backward()
    np.testing.assert_array_equal(din, 2 * g * xt.grad.numpy())


# ---------------------------------------------------------------------------------------
# the autoencoder spec
# ---------------------------------------------------------------------------------------

def test_autoencoder_report_by_hand():
    report = cnncc.check(SPEC)
    rows = {row.name: row for row in report.rows}
    assert [row.type for row in report.rows] == ["conv2d", "conv2d", "conv_transpose2d", "upsample2d", "conv2d"]
    assert [row.output_shape for row in report.rows] == [(8, 14, 14), (16, 7, 7), (8, 14, 14), (8, 28, 28),
                                                         (1, 28, 28)]
    # conv: k*k*c_in*filters + filters; transposed conv: c_in*(filters/groups)*k*k + filters
    by_hand = {"enc1": 3 * 3 * 1 * 8 + 8, "enc2": 3 * 3 * 8 * 16 + 16, "dec1": 16 * 8 * 3 * 3 + 8, "up": 0,
               "dec2": 3 * 3 * 8 * 1 + 1}
    assert {name: row.params for name, row in rows.items()} == by_hand
    assert report.totals["params"] == report.totals["trainable_params"] == 80 + 1168 + 1160 + 73 == 2481
    assert report.program.num_params == 2481
    # MACs: the transposed conv's every input pixel times every tap; bilinear: 4 per output
    assert rows["dec1"].macs == 7 * 7 * 16 * 3 * 3 * 8
    assert rows["up"].macs == 28 * 28 * 8 * 4
    assert rows["dec2"].macs == 28 * 28 * 1 * 3 * 3 * 8
    # receptive fields: 3, 3 + 2*2 = 7 (jump 4); the transposed conv (stride 2) reads ceil(3/2) = 2
    # input pixels, 7 + 4 = 11 (jump 2); bilinear 2, 11 + 2 = 13 (jump 1); the last conv 13 + 2 = 15
    assert [row.receptive_field for row in report.rows] == [(3, 3), (7, 7), (11, 11), (13, 13), (15, 15)]
    text = report.to_text(explain=True)
    for line in ("height: (7 - 1)*2 - 2*1 + 1*(3 - 1) + 1 + 1 = 14", "params: 16*8*3*3 + 8 = 1160",
                 "MACs: 7*7*16*3*3*8 = 56448", "height: 14*2 = 28", "MACs: 28*28*8*4 = 25088"):
        assert line in text, line


def test_autoencoder_trains_on_synthetic_data(build_dir):
    spec = cnncc.load_spec(SPEC)
    assert spec.training["targets"] == "input"
    (x_train, y_train), (x_test, y_test) = load_data(spec, "synthetic", limit=192)
    assert y_train is x_train and y_test is x_test  # an autoencoder's targets are its inputs
    model = cnncc.compile(spec, build_dir=build_dir)
    model.init(0)
    before = model.evaluate(x_test, y_test)["loss"]
    history = model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    after = model.evaluate(x_test, y_test)["loss"]
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0]
    assert after < 0.8 * before, (before, after)


def test_transposed_conv_reference_is_the_adjoint_of_conv2d():
    """<conv_transpose2d(x), y> = <x, conv2d(y)> for the same weights and settings: the
    reference's scatter is the transpose of an independent implementation."""
    rng = np.random.default_rng(8)
    for stride, pad, dilation, groups in [((2, 2), (1, 1), (1, 1), 1), ((3, 1), (0, 2), (1, 2), 2)]:
        x = rng.standard_normal((2, 4, 3, 5))
        w = rng.standard_normal((4, 3, 3, 2))  # [c_in, filters/groups, kh, kw]
        out = ref.conv_transpose2d(x, w, None, stride, pad, (0, 0), dilation, groups)
        y = rng.standard_normal(out.shape)
        # PyTorch's layout [c_in, filters/groups, kh, kw] is exactly the weight of the conv2d from
        # the transposed conv's output channels back to its input channels
        back = ref.conv2d(y, w, None, stride, (pad[0], pad[0], pad[1], pad[1]), dilation, groups)
        assert back.shape == x.shape
        assert abs(np.sum(out * y) - np.sum(x * back)) <= 1e-10 * np.sum(np.abs(out * y))


def test_reference_backwards_match_finite_differences():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 3, 4))
    for mode in ("nearest", "bilinear"):
        y = ref.upsample2d(x, (2, 3), mode)
        R = rng.standard_normal(y.shape)
        numeric = ref.numerical_gradient(lambda: np.sum(ref.upsample2d(x, (2, 3), mode) * R), x)
        assert table.rel_err(ref.upsample2d_backward(R, x.shape, (2, 3), mode), numeric) <= 1e-8
    w = rng.standard_normal((2, 3, 2, 3))
    b = rng.standard_normal(3)
    args = dict(stride=(2, 1), pad=(1, 0), output_padding=(1, 0), dilation=(1, 2))
    R = rng.standard_normal(ref.conv_transpose2d(x, w, b, **args).shape)
    dx, dw, db = ref.conv_transpose2d_backward(R, x, w, True, **args)
    for analytic, array in ((dx, x), (dw, w), (db, b)):
        numeric = ref.numerical_gradient(lambda: np.sum(ref.conv_transpose2d(x, w, b, **args) * R), array)
        assert table.rel_err(analytic, numeric) <= 1e-8


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def _rejected(layers, input_section=None, **top):
    spec = {"name": "bad", "input": input_section or {"channels": 4, "height": 5, "width": 5}, "layers": layers,
            **top}
    with pytest.raises(SpecError) as info:
        cnncc.check(spec)
    return [(d.field, d.message) for d in info.value.diagnostics]


@pytest.mark.parametrize("layer,field,message", [
    ({"type": "conv_transpose2d", "filters": 2, "kernel": 3, "stride": 2, "output_padding": 2}, "output_padding",
     "output_padding 2 along the height must be smaller than the stride 2 or the dilation 1"),
    ({"type": "conv_transpose2d", "filters": 2, "kernel": 3, "stride": [1, 3], "dilation": [2, 1],
      "output_padding": [1, 3]}, "output_padding", "output_padding 3 along the width must be smaller"),
    ({"type": "conv_transpose2d", "filters": 3, "kernel": 3, "groups": 2}, "groups",
     "groups 2 does not divide filters 3"),
    ({"type": "conv_transpose2d", "filters": 2, "kernel": 1, "padding": 3}, "padding",
     "padding 3 crops the whole height: (5 - 1)*1 - 2*3 + 1*(1 - 1) + 0 + 1 = -1"),
    ({"type": "conv_transpose2d", "filters": 2, "kernel": 3, "output_padding": -1}, "output_padding",
     "output_padding must be at least 0, got -1"),
    ({"type": "upsample2d", "scale_factor": 0}, "scale_factor", "scale_factor must be at least 1, got 0"),
    ({"type": "upsample2d", "scale_factor": 2, "mode": "bicubic"}, "mode",
     "mode must be one of nearest | bilinear, got the string 'bicubic'"),
])
def test_bad_fields_are_located_errors(layer, field, message):
    [(got_field, got_message)] = _rejected([layer])
    assert got_field == field and message in got_message, got_message


def test_kinds_refuse_inputs_they_cannot_take():
    signal = {"channels": 2, "length": 8}
    assert "expects a C x H x W image input" in _rejected([{"type": "upsample2d", "scale_factor": 2}], signal)[0][1]
    assert "expects a C x H x W image input" in _rejected(
        [{"type": "conv_transpose2d", "filters": 2, "kernel": 2}], signal)[0][1]
    assert "expects an image or signal input, got a flat vector" in _rejected(
        [{"type": "flatten"}, {"type": "global_maxpool"}])[0][1]


def test_targets_input_needs_an_output_shaped_like_the_input():
    [(field, message)] = _rejected([{"type": "conv2d", "filters": 4, "kernel": 3}], loss="mse",
                                   training={"targets": "input"})
    assert field == "training" and "targets: input needs an output shaped like the input (5x5x4)" in message
    [(field, message)] = _rejected([{"type": "flatten"}, {"type": "dense", "units": 100}],
                                   {"channels": 100, "length": 1}, loss="softmax_cross_entropy",
                                   training={"targets": "input"})
    assert field == "training" and "a loss with real-valued targets" in message
    assert "targets must be one of data | input" in _rejected(
        [{"type": "conv2d", "filters": 4, "kernel": 1}], loss="mse", training={"targets": "inputs"})[0][1]

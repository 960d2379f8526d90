"""The checker and its report: the course notes' shapes, parameter and MAC counts, exactly;
receptive fields, default names, DAGs, 1-D signals; the JSON, text, markdown and --explain
outputs; the memory totals; speed; the accepted spec sources; the `cnncc check` command.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnncc import Report, Spec, SpecError, check, load_spec
from cnncc.layers import format_shape

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
LENET = SPECS / "lenet5.yaml"


def spec_dict(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def net(input_shape: dict, *layers: dict, **top) -> dict:
    return {"name": "net", "input": input_shape, "layers": list(layers), **top}


def image(c: int, h: int, w: int | None = None) -> dict:
    return {"channels": c, "height": h, "width": w if w is not None else h}


def shapes(report: Report) -> list[str]:
    return [format_shape(row.output_shape) for row in report.rows]


def only(report: Report):
    assert len(report.rows) == 1
    return report.rows[0]


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cnncc", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


# ---- the notes' numbers -------------------------------------------------------------------
def test_lenet_table():
    report = check(LENET)
    assert [row.name for row in report.rows] == ["conv1", "pool1", "conv2", "pool2", "flatten_1", "fc3", "fc4",
                                                 "fc5"]
    assert shapes(report) == ["28x28x8", "14x14x8", "10x10x16", "5x5x16", "400", "120", "84", "10"]
    assert [row.params for row in report.rows] == [608, 0, 3216, 0, 0, 48120, 10164, 850]
    assert [row.macs for row in report.rows] == [470400, 0, 320000, 0, 0, 48000, 10080, 840]
    assert report.totals["params"] == report.totals["trainable_params"] == 62958
    assert report.totals["non_trainable_params"] == 0
    text = report.to_text()
    assert "params: 62,958 (trainable 62,958, non-trainable 0)" in text
    for cell in ("28x28x8", "3,216", "48,120", "10,164"):
        assert cell in text


def test_three_conv():
    report = check(SPECS / "three_conv.yaml")
    assert format_shape(report.spec.input_shape) == "64x64x3"
    assert shapes(report)[:3] == ["62x62x8", "29x29x16", "12x12x32"]
    assert shapes(report)[3:] == [str(12 * 12 * 32), "2"]


def test_conv_params_448():
    row = only(check(net(image(3, 32), {"type": "conv2d", "filters": 16, "kernel": 3})))
    assert row.params == 3 * 3 * 3 * 16 + 16 == 448


def test_same_padding_7x7():
    report = check(net(image(3, 256), {"name": "c", "type": "conv2d", "filters": 8, "kernel": 7, "padding": "same"}))
    row = only(report)
    assert format_shape(row.output_shape) == "256x256x8"
    assert row.params == 1184
    assert "1,184" in report.to_text()
    assert any("height 3+3, width 3+3" in line for line in row.explain)
    explained = report.to_text(explain=True)
    assert "height 3+3, width 3+3" in explained
    assert "floor((256 + 2*3 - 7)/1) + 1 = 256" in explained
    assert "params: 7*7*3*8 + 8 = 1184" in explained
    assert "height 3+3" not in report.to_text()


def test_same_padding_odd_remainder_goes_bottom_right():
    row = only(check(net(image(1, 16), {"type": "conv2d", "filters": 1, "kernel": 3, "stride": 2,
                                        "padding": "same"})))
    assert format_shape(row.output_shape) == "8x8x1"
    assert any("height 0+1, width 0+1" in line for line in row.explain)


@pytest.mark.parametrize("size, layer, expected", [
    (8, {"type": "conv2d", "filters": 1, "kernel": 3}, "6x6x1"),
    (4, {"type": "maxpool2d", "kernel": 2, "stride": 2}, "2x2x1"),
    (5, {"type": "maxpool2d", "kernel": 3, "stride": 1}, "3x3x1"),
    (5, {"type": "conv2d", "filters": 1, "kernel": 3, "padding": 1, "stride": 2}, "3x3x1"),
    (4, {"type": "avgpool2d", "kernel": 2}, "2x2x1"),  # stride defaults to the kernel
    (7, {"type": "conv2d", "filters": 2, "kernel": 3, "dilation": 2}, "3x3x2"),
    (6, {"type": "conv2d", "filters": 2, "kernel": [3, 1], "padding": [0, 1]}, "4x8x2"),
    (28, {"type": "conv2d", "filters": 4, "kernel": 5, "padding": "valid"}, "24x24x4"),
])
def test_output_size_examples(size, layer, expected):
    assert format_shape(only(check(net(image(1, size), layer))).output_shape) == expected


def test_output_size_explained():
    report = check(net(image(1, 5), {"type": "conv2d", "filters": 1, "kernel": 3, "padding": 1, "stride": 2}))
    assert "floor((5 + 2*1 - 3)/2) + 1 = 3" in report.to_text(explain=True)


def vgg16() -> dict:
    layers = []
    for block, (convs, filters) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, convs + 1):
            layers.append({"name": f"conv{block}_{i}", "type": "conv2d", "filters": filters, "kernel": 3,
                           "padding": 1, "activation": "relu"})
        layers.append({"name": f"pool{block}", "type": "maxpool2d", "kernel": 2})
    layers += [{"type": "flatten"},
               {"name": "fc6", "type": "dense", "units": 4096, "activation": "relu"},
               {"name": "fc7", "type": "dense", "units": 4096, "activation": "relu"},
               {"name": "fc8", "type": "dense", "units": 1000}]
    return {"name": "vgg16", "input": image(3, 224), "layers": layers, "loss": "softmax_cross_entropy"}


def test_vgg16_totals():
    spec = vgg16()
    assert sum(layer["type"] == "conv2d" for layer in spec["layers"]) == 13
    assert sum(layer["type"] == "maxpool2d" for layer in spec["layers"]) == 5
    report = check(spec)
    assert report.totals["params"] == 138_357_544
    assert report.totals["macs"] == 15_470_264_320  # the published 15.47 G
    assert shapes(report)[-5:] == ["7x7x512", "25088", "4096", "4096", "1000"]


def test_batchnorm_params():
    report = check(net(image(3, 8), {"name": "conv", "type": "conv2d", "filters": 16, "kernel": 3, "bias": False},
                       {"name": "bn", "type": "batchnorm"},
                       {"type": "flatten"}, {"name": "fc", "type": "dense", "units": 10},
                       {"name": "bn_flat", "type": "batchnorm"}))
    rows = {row.name: row for row in report.rows}
    assert (rows["conv"].params, rows["conv"].trainable_params) == (432, 432)
    assert (rows["bn"].params, rows["bn"].trainable_params) == (4 * 16, 2 * 16)
    assert (rows["bn_flat"].params, rows["bn_flat"].trainable_params) == (4 * 10, 2 * 10)
    totals = report.totals
    assert totals["params"] == 432 + 64 + 6 * 6 * 16 * 10 + 10 + 40
    assert totals["non_trainable_params"] == 2 * 16 + 2 * 10
    assert totals["trainable_params"] == totals["params"] - totals["non_trainable_params"]
    assert any("2*16 trainable (gamma, beta) + 2*16 running statistics = 64" in line for line in rows["bn"].explain)


def test_receptive_fields_lenet():
    report = check(LENET)
    fields = {row.name: row.receptive_field for row in report.rows}
    assert fields["conv1"] == (5, 5)
    assert fields["pool1"] == (6, 6)
    assert fields["conv2"] == (14, 14)
    assert fields["pool2"] == (16, 16)
    assert fields["fc3"] == (32, 32)  # a dense unit sees the whole image
    line = next(line for line in report.to_text().splitlines() if " conv2 " in line)
    assert line.rstrip().endswith("14x14")


def test_receptive_field_dilation_and_clipping():
    report = check(net(image(1, 9), {"name": "a", "type": "conv2d", "filters": 1, "kernel": 3, "dilation": 2},
                       {"name": "b", "type": "conv2d", "filters": 1, "kernel": 5}))
    fields = {row.name: row.receptive_field for row in report.rows}
    assert fields["a"] == (5, 5)
    assert fields["b"] == (9, 9)  # 5 + 4, within the 9x9 image


def test_default_names():
    report = check(net(image(1, 28),
                       {"type": "conv2d", "filters": 4, "kernel": 3},
                       {"name": "conv2d_2", "type": "conv2d", "filters": 4, "kernel": 3},
                       {"type": "conv2d", "filters": 4, "kernel": 3},
                       {"type": "maxpool2d", "kernel": 2},
                       {"name": "MAXPOOL2D_2", "type": "maxpool2d", "kernel": 2},
                       {"type": "maxpool2d", "kernel": 2},
                       {"type": "relu"},
                       {"type": "flatten"},
                       {"type": "dense", "units": 3, "inputs": ["flatten_1"]}))
    assert [row.name for row in report.rows] == ["conv2d_1", "conv2d_2", "conv2d_3", "maxpool2d_1", "MAXPOOL2D_2",
                                                 "maxpool2d_3", "relu_1", "flatten_1", "dense_1"]


def test_inputs_dag_resnet_small():
    report = check(SPECS / "resnet_small.yaml")
    rows = {row.name: row for row in report.rows}
    assert rows["stem"].inputs == ("input",)
    assert rows["stem_bn"].inputs == ("stem",)  # default: the previous layer
    assert rows["block1_add"].inputs == ("block1_bn2", "stem_relu")
    assert format_shape(rows["block1_add"].output_shape) == "16x16x16"
    assert format_shape(rows["down"].output_shape) == "8x8x32"
    assert rows["depthwise"].inputs == ("down",)
    assert rows["depthwise"].params == 3 * 3 * 1 * 32 + 32
    assert rows["pointwise"].inputs == ("depthwise",)
    assert rows["merged"].inputs == ("down", "pointwise")
    assert format_shape(rows["merged"].output_shape) == "8x8x64"
    assert shapes(report)[-3:] == ["64", "64", "10"]
    convs = 3 * 3 * 3 * 16 + 2 * 3 * 3 * 16 * 16 + (3 * 3 * 16 * 32 + 32) + 320 + (32 * 32 + 32)
    assert report.totals["params"] == convs + 3 * 4 * 16 + 64 * 10 + 10
    assert report.totals["non_trainable_params"] == 3 * 2 * 16


def test_one_d_shapes():
    report = check(SPECS / "signal1d.yaml")
    assert format_shape(report.spec.input_shape) == "100x1"
    assert [row.output_shape for row in report.rows] == [(8, 100), (8, 50), (16, 23), (16,), (4,)]
    assert shapes(report) == ["100x8", "50x8", "23x16", "16", "4"]
    assert [row.params for row in report.rows] == [3 * 1 * 8 + 8, 0, 5 * 8 * 16 + 16, 0, 16 * 4 + 4]
    assert [row.macs for row in report.rows] == [100 * 8 * 3, 0, 23 * 16 * 5 * 8, 0, 16 * 4]
    assert [row.receptive_field for row in report.rows] == [(1, 3), (1, 4), (1, 12), (1, 100), (1, 100)]
    explained = report.to_text(explain=True)
    assert "length: floor((50 + 2*0 - 5)/2) + 1 = 23" in explained
    assert "height:" not in explained


def test_one_d_pool_and_padding():
    report = check(net({"channels": 2, "length": 10},
                       {"type": "conv1d", "filters": 3, "kernel": 3, "padding": 1},
                       {"type": "avgpool1d", "kernel": 3, "stride": 2, "padding": 1}))
    assert [row.output_shape for row in report.rows] == [(3, 10), (3, 5)]
    assert report.rows[0].params == 3 * 2 * 3 + 3


def test_padding_per_side_top_left_bottom_right():
    report = check(net(image(3, 7, 8), {"name": "c", "type": "conv2d", "filters": 2, "kernel": 3,
                                        "padding": [0, 2, 1, 0]},
                       {"name": "p", "type": "maxpool2d", "kernel": 3, "stride": 2, "padding": [1, 0, 0, 1]}))
    # height 7 + 0 + 1 - 3 + 1 = 6, width 8 + 2 + 0 - 3 + 1 = 8; pool (6+1-3)//2+1 = 3, (8+1-3)//2+1 = 4
    assert [row.output_shape for row in report.rows] == [(2, 6, 8), (2, 3, 4)]
    explained = report.to_text(explain=True)
    assert "height: floor((7 + 0 + 1 - 3)/1) + 1 = 6" in explained
    assert "width: floor((8 + 2 + 0 - 3)/1) + 1 = 8" in explained
    assert "padding per side: height 0 top + 1 bottom, width 2 left + 0 right" in explained


def test_one_d_padding_left_right():
    report = check(net({"channels": 1, "length": 10}, {"type": "conv1d", "filters": 1, "kernel": 3,
                                                      "padding": [2, 0]}))
    assert report.rows[0].output_shape == (1, 10)


@pytest.mark.parametrize("layer, message", [
    ({"type": "conv2d", "filters": 1, "kernel": 3, "padding": [1, 1, 1]},
     "list of 2 integers [ph, pw] or 4 [top, left, bottom, right], got a list of 3"),
    ({"type": "conv2d", "filters": 1, "kernel": 3, "padding": [1, -1, 0, 0]}, "must be at least 0, got -1"),
    ({"type": "maxpool2d", "kernel": 2, "padding": [0, 0, 2, 0]}, "padding 2 is more than half the kernel 2x2"),
    ({"type": "conv1d", "filters": 1, "kernel": 3, "padding": [1, 1, 1, 1]},
     "list of 2 integers [left, right], got a list of 4"),
])
def test_padding_per_side_checks(layer, message):
    shape = {"channels": 1, "length": 8} if layer["type"] == "conv1d" else image(1, 8)
    with pytest.raises(SpecError) as info:
        check(net(shape, layer))
    assert message in info.value.format()


# ---- report formats -----------------------------------------------------------------------
LAYER_KEYS = {"name", "type", "inputs", "output_shape", "params", "trainable_params", "macs"}
TOTAL_KEYS = {"params", "trainable_params", "non_trainable_params", "macs", "backward_macs", "activation_bytes",
              "param_bytes", "training_bytes", "batch"}
# Added to the totals by the deployment (emit) work; not in the documented list yet.
DEPLOYMENT_TOTAL_KEYS = {"weight_bytes", "arena_batch", "arena_bytes", "arena_bytes_unshared"}


def test_json_report_keys_and_stability():
    report = check(LENET)
    text = report.to_json()
    data = json.loads(text)
    assert set(data) == {"name", "input", "layers", "totals", "warnings"} and data["warnings"] == []
    assert data["name"] == "lenet5"
    assert data["input"] == {"shape": [3, 32, 32]}
    for layer in data["layers"]:
        assert set(layer) == LAYER_KEYS
    assert TOTAL_KEYS <= set(data["totals"]) <= TOTAL_KEYS | DEPLOYMENT_TOTAL_KEYS
    assert data["layers"][0] == {"name": "conv1", "type": "conv2d", "inputs": ["input"], "output_shape": [8, 28, 28],
                                 "params": 608, "trainable_params": 608, "macs": 470400}
    assert data["totals"]["params"] == 62958 and data["totals"]["batch"] == 64
    assert data == report.to_dict()
    assert json.dumps(data, indent=2) == text  # a round trip changes nothing
    assert check(LENET).to_json() == text  # and so does another run


def test_explain_lenet_conv1():
    text = check(LENET).to_text(explain=True)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if " conv1 " in line)
    block = lines[start + 1:start + 5]
    assert any("floor((32 + 2*0 - 5)/1) + 1 = 28" in line for line in block)
    assert any("5*5*3*8 + 8 = 608" in line for line in block)
    assert any("28*28*8*5*5*3 = 470400" in line for line in block)
    assert "floor(" not in check(LENET).to_text()


def test_markdown_is_a_table():
    report = check(LENET)
    lines = report.to_markdown().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(report.rows)
    assert set(table[1].replace("|", "").replace(":", "")) == {"-"}
    width = table[0].count("|")
    assert all(line.count("|") == width for line in table)
    assert "| 1 | conv1 | conv2d | 28x28x8 | 608 | 470,400 | 5x5 |" in table
    assert any("62,958" in line for line in lines)


# ---- memory -------------------------------------------------------------------------------
# Activation tensors (elements per sample) of LeNet, counted by hand: every op output, each
# `activation: relu` in its layer's op (one tensor for both), flatten a view of its input.
LENET_ACTIVATIONS = 8 * 28 * 28 + 8 * 14 * 14 + 16 * 10 * 10 + 16 * 5 * 5 + 120 + 84 + 10


def lenet_with(optimizer: dict) -> dict:
    spec = spec_dict(LENET)
    spec["optimizer"] = optimizer
    return spec


def workspace_bytes(program):
    """The one workspace buffer: what an op keeps from its forward to its backward (batchnorm's
    saved statistics) at an offset of its own, then one region the scratch of every other op (the
    conv kernels' padded planes and patch matrices, used only within a call) shares."""
    kept = [(op.workspace_offset, op.workspace_size) for op in program.ops if op.workspace_size and op.keeps_workspace]
    scratch = [op for op in program.ops if op.workspace_size and not op.keeps_workspace]
    assert all(a[0] + a[1] <= b[0] for a, b in zip(kept, kept[1:]))  # no overlap
    end = sum(size for _, size in kept)
    assert all(op.workspace_offset == end for op in scratch)
    assert program.workspace_size == end + max((op.workspace_size for op in scratch), default=0)
    return program.workspace_size * program.itemsize


@pytest.mark.parametrize("optimizer, state_per_weight", [
    ({"type": "adam", "lr": 0.001}, 2),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, 1),
    ({"type": "sgd", "lr": 0.1}, 0),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}, 1),
])
def test_training_bytes(optimizer, state_per_weight):
    report = check(lenet_with(optimizer))
    t = report.totals
    item = 4
    assert t["activation_bytes"] == LENET_ACTIVATIONS * item
    assert t["param_bytes"] == t["params"] * item
    batch = t["batch"]
    assert batch == 64
    expected = (t["param_bytes"]  # parameters
                + t["param_bytes"]  # their gradients
                + state_per_weight * t["trainable_params"] * item  # optimizer state
                + t["activation_bytes"] * batch  # activations
                + t["activation_bytes"] * batch  # their gradients
                + workspace_bytes(report.program))  # the conv kernels' scratch
    assert t["training_bytes"] == expected
    assert f"{expected:,} bytes" in report.to_text()


def test_training_bytes_workspace_and_float64():
    spec = spec_dict(SPECS / "resnet_small.yaml")
    spec["dtype"] = "float64"
    report = check(spec)
    t = report.totals
    item = 8
    batchnorms = [op for op in report.program.ops if op.kind == "batchnorm"]
    assert len(batchnorms) == 3 and all(op.workspace_size == 2 * 16 for op in batchnorms)  # mean, 1/std
    assert all(op.keeps_workspace for op in batchnorms)  # for the backward
    convs = [op for op in report.program.ops if op.kind == "conv2d"]
    assert convs and not any(op.keeps_workspace for op in convs)  # scratch within a call: shared
    workspace = workspace_bytes(report.program)
    assert t["param_bytes"] == t["params"] * item
    # params, then grads and Adam's two moments for the trainable ones only
    expected = t["param_bytes"] + 3 * t["trainable_params"] * item + 2 * t["activation_bytes"] * t["batch"] \
        + workspace
    assert t["training_bytes"] == expected


def test_batch_changes_training_bytes_linearly():
    totals = {batch: check(LENET, batch=batch).totals for batch in (1, 2, 7, 64)}
    activation = totals[1]["activation_bytes"]
    for batch, t in totals.items():
        assert t["batch"] == batch
        assert t["activation_bytes"] == activation  # per sample
        assert t["training_bytes"] - totals[1]["training_bytes"] == 2 * activation * (batch - 1)
    assert check(LENET).totals["training_bytes"] == totals[64]["training_bytes"]  # the spec's batch_size: 64


# ---- speed and sources --------------------------------------------------------------------
def test_200_layers_check_fast():
    layers = []
    for i in range(100):
        layers.append({"name": f"conv{i}", "type": "conv2d", "filters": 8, "kernel": 3, "padding": 1})
        layers.append({"name": f"relu{i}", "type": "relu"})
    text = yaml.safe_dump(net(image(8, 16), *layers, loss="mse"))
    check(text)  # warm up imports
    start = time.perf_counter()
    report = check(text)
    elapsed = time.perf_counter() - start
    assert len(report.rows) == 200
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert report.totals["params"] == 100 * (3 * 3 * 8 * 8 + 8)


def test_load_spec_sources(tmp_path):
    text = LENET.read_text(encoding="utf-8")
    from_str_path = load_spec(str(LENET))
    from_path = load_spec(LENET)
    from_text = load_spec(text)
    from_dict = load_spec(yaml.safe_load(text))
    assert isinstance(from_str_path, Spec)
    assert load_spec(from_path) is from_path
    assert from_str_path.path == from_path.path == str(LENET)
    assert from_text.path == "<string>" and from_dict.path == "<dict>"
    assert len({s.fingerprint() for s in (from_str_path, from_path, from_text, from_dict)}) == 1
    assert from_path.layers[0].loc.line == 7 and from_dict.layers[0].loc is None
    other = tmp_path / "spec_without_extension"  # an existing file is a path whatever its name
    other.write_text(text, encoding="utf-8")
    assert load_spec(str(other)).fingerprint() == from_path.fingerprint()
    assert check(from_path).totals == check(LENET).totals
    with pytest.raises(TypeError):
        load_spec(42)
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "missing.yaml"))
    assert "cannot read spec" in str(info.value)


def test_load_spec_scalars():
    """What YAML makes of scalars: 1e-3 is a float, a date stays a string, quotes make strings."""
    spec = load_spec(net(image(1, 4), {"type": "flatten"}, optimizer={"type": "adam", "lr": 0.001}))
    assert spec.optimizer.lr == 0.001 and spec.optimizer.settings["beta1"] == 0.9
    text = "name: net\ninput: {channels: 1, length: 4}\nlayers: [{type: flatten}]\n" \
           "optimizer: {type: adam, lr: 1e-3, eps: 1E-8, beta1: 0.95}\n"
    spec = load_spec(text)
    assert spec.optimizer.lr == 0.001 and spec.optimizer.settings["eps"] == 1e-8
    assert spec.optimizer.settings["beta1"] == 0.95
    with pytest.raises(SpecError) as info:
        load_spec(text.replace("name: net", "name: 2024-01-01"))
    assert "got the string '2024-01-01'" in str(info.value)


def test_check_does_not_mutate_a_dict():
    spec = spec_dict(LENET)
    before = copy.deepcopy(spec)
    check(spec)
    assert spec == before


# ---- the command line ---------------------------------------------------------------------
def test_cli_check_help():
    result = run_cli("check", "--help")
    assert result.returncode == 0
    for option in ("--format", "--explain", "--batch"):
        assert option in result.stdout


def test_cli_check_formats():
    result = run_cli("check", str(LENET), "--format", "json", "--batch", "7")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(check(LENET, batch=7).to_json())
    assert data["totals"]["batch"] == 7
    result = run_cli("check", str(LENET), "--explain")
    assert result.returncode == 0, result.stderr
    assert "floor((32 + 2*0 - 5)/1) + 1 = 28" in result.stdout and "5*5*3*8 + 8 = 608" in result.stdout
    result = run_cli("check", str(LENET), "--format", "markdown")
    assert result.returncode == 0 and "| 1 | conv1 | conv2d |" in result.stdout
    result = run_cli("check", str(LENET), "--batch", "0")
    assert result.returncode == 2 and "positive integer" in result.stderr  # argparse's usage error


def test_a_conv_whose_scratch_would_overflow_int_is_refused():
    """Input (1,024 x 1,024 x 1,024) and output (512 x 512 x 1) fit the tensor limit, but the
    patch matrix of this stride-2 conv (im2col) would be 1,024 * 9 taps x 512 * 512 pixels."""
    spec = {"name": "wide", "input": {"channels": 1024, "height": 1024, "width": 1024},
            "layers": [{"name": "c", "type": "conv2d", "filters": 1, "kernel": 3, "stride": 2, "padding": 1}]}
    with pytest.raises(SpecError, match=r"scratch .* would have [\d,]+ elements; the limit is 2,147,483,647"):
        check(spec)


def test_an_axis_grown_by_padding_is_refused_long_before_it_nears_int_max():
    """Inputs are at most 2^20 per axis, but padding (up to 2^20 a side) grows an axis layer by
    layer. The padded planes of a conv's scratch (several copies of the axis) pass 2^31 - 1 first,
    at about 2^29.4, so no axis plus its padding can overflow an int in the C bounds arithmetic
    (and any axis over 2^30 would be refused on its own)."""
    pad = 1 << 20
    # 400 layers: the scratch limit is a lowering check (the checker knows no kernels), so a longer
    # stack would first be refused by the checker's axis limit, at p512.
    layers = [{"name": f"p{i}", "type": "conv1d", "filters": 1, "kernel": 1, "padding": pad} for i in range(400)]
    spec = {"name": "grow", "input": {"channels": 1, "length": 8}, "layers": layers}
    with pytest.raises(SpecError, match=r"layer 342 'p341'.*scratch .* would have 2,149,580,827 elements") as info:
        check(spec)
    assert len(info.value.diagnostics) == 1
    longest = 8 + 341 * 2 * pad  # p341's input
    assert longest + 2 * pad < 1 << 30

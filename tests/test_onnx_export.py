"""ONNX export against independent implementations: onnxruntime (float32) and onnx's own
reference evaluator (float64: onnxruntime's CPU Conv has no double kernel). Every example spec,
random networks from the fuzz generator, every opset from 13 to 21, and the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings

import cnncc
import interop_cases
from reference import rel_err
from tools import need_module

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
INSTALL = 'pip install "cnncc[onnx]"'
TOL32, TOL64 = 1e-5, 1e-10


def with_dtype(path: Path, dtype: str) -> dict:
    spec = yaml.safe_load(path.read_text())
    spec["dtype"] = dtype
    return spec


def randomised(model, seed=1):
    """Weights and running statistics away from their initial values (gamma 1, mean 0, var 1 would
    hide a swapped pair)."""
    rng = np.random.default_rng(seed)
    model.init(seed)
    for key, view in model.params.items():
        if key.endswith((".gamma", ".running_var")):
            view[...] = rng.uniform(0.5, 1.5, view.shape)
        elif key.endswith((".beta", ".running_mean", ".bias")):
            view[...] = rng.normal(0, 0.3, view.shape)
    return model


def run_onnx(path, x):
    """The exported model's output: onnxruntime in float32, onnx's reference evaluator in float64."""
    if x.dtype == np.float32:
        ort = need_module("onnxruntime", INSTALL)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]
    need_module("onnx", INSTALL)
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path), new_ops=[_global_max_pool()]).run(None, {"input": x})[0]


def _global_max_pool():
    """GlobalMaxPool as the ONNX spec defines it (the maximum over every spatial axis): onnx's own
    reference op also reduces the channels of an N x C x L input (onnx issue 7682, fixed by pull
    request 8383 after the onnx 1.23 used here); for N x C x H x W the two agree."""
    from onnx.reference.op_run import OpRun

    class GlobalMaxPool(OpRun):
        def _run(self, x):
            return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)

    return GlobalMaxPool


def exported(model, tmp_path, opset=17):
    onnx = need_module("onnx", INSTALL)
    import cnncc.onnx

    path = tmp_path / f"{model.spec.name}_{opset}.onnx"
    cnncc.onnx.export(model, path, opset=opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def output_like(model, y):
    """cnncc's output, in ONNX's shape (a flat output is N x C in both)."""
    return np.asarray(y).reshape((y.shape[0],) + tuple(model.output_shape))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_example_spec_exports_and_runs_the_same(spec, dtype, build_dir, tmp_path):
    # float32 (every example spec's dtype) compiles the spec file itself, so it shares its build with
    # the other tests of the example specs (a dict would be a different source: no file, no spec
    # lines in the banners); float64 is built quicker
    if dtype == "float32":
        assert "dtype" not in yaml.safe_load(spec.read_text()), spec
        model = randomised(cnncc.compile(spec, build_dir=build_dir))
    else:
        model = randomised(cnncc.compile(with_dtype(spec, dtype), build_dir=build_dir, cflags=("-O1",)))
    path = exported(model, tmp_path)
    x = np.random.default_rng(2).normal(size=(3,) + model.input_shape).astype(dtype)
    error = rel_err(output_like(model, run_onnx(path, x)), model.predict(x))
    assert error <= (TOL32 if dtype == "float32" else TOL64), error


def test_graph_names_are_the_spec_names_and_same_padding_is_explicit(build_dir, tmp_path):
    onnx = need_module("onnx", INSTALL)
    spec = {"name": "names", "input": {"channels": 2, "height": 7, "width": 6}, "layers": [
        {"name": "even", "type": "conv2d", "filters": 3, "kernel": 4, "padding": "same", "activation": "relu"},
        {"name": "pool", "type": "avgpool2d", "kernel": 3, "stride": 2, "padding": 1},
        {"name": "gap", "type": "global_avgpool"}, {"name": "head", "type": "dense", "units": 2}]}
    model = randomised(cnncc.compile(spec, build_dir=build_dir))
    graph = onnx.load(str(exported(model, tmp_path))).graph
    nodes = {node.name: node for node in graph.node}
    assert {"even", "even_relu", "pool", "gap", "head"} <= set(nodes)
    assert [o.name for o in graph.output] == ["head"]
    assert {t.name for t in graph.initializer} == {"even.weight", "even.bias", "head.weight", "head.bias"}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["even"].attribute}
    assert attrs["pads"] == [1, 1, 2, 2]  # 'same' with an even kernel: the odd remainder bottom/right
    pool = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["pool"].attribute}
    assert pool["count_include_pad"] == 1  # cnncc divides by kh*kw
    x = np.random.default_rng(0).normal(size=(2, 2, 7, 6)).astype(np.float32)
    assert rel_err(run_onnx(tmp_path / "names_17.onnx", x), model.predict(x)) <= TOL32


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_opset_from_13_to_21(opset, build_dir, tmp_path):
    model = randomised(cnncc.compile(ROOT / "specs" / "resnet_small.yaml", build_dir=build_dir))
    path = exported(model, tmp_path, opset)
    x = np.random.default_rng(opset).normal(size=(2,) + model.input_shape).astype(np.float32)
    assert rel_err(run_onnx(path, x), model.predict(x)) <= TOL32


@pytest.mark.parametrize("opset", [12, 22, "17", True])
def test_an_opset_outside_13_to_21_is_refused(opset, build_dir, tmp_path):
    need_module("onnx", INSTALL)
    import cnncc.onnx

    model = cnncc.compile(ROOT / "specs" / "lenet5.yaml", build_dir=build_dir)
    with pytest.raises(ValueError, match="opset must be an integer from 13 to 21"):
        cnncc.onnx.export(model, tmp_path / "x.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


def test_float64_slopes_and_epsilons_go_in_whole(build_dir, tmp_path):
    # ONNX's float attributes are float32: a float64 leaky_relu slope becomes PRelu's slope tensor,
    # and the rest of a float64 eps is added to the variance. A channel of variance 0 (a dead
    # ReLU's) shows the difference most: with eps rounded to float32 it would be 1.3e-8 off.
    onnx = need_module("onnx", INSTALL)
    spec = {"name": "wide", "input": {"channels": 2, "length": 3}, "dtype": "float64", "layers": [
        {"name": "leak", "type": "leaky_relu", "alpha": 0.30953421291650424},
        {"name": "conv", "type": "conv1d", "filters": 2, "kernel": 1, "activation": "leaky_relu"},
        {"name": "norm", "type": "batchnorm", "eps": 1e-5}]}
    model = randomised(cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)))
    model.params["norm.running_var"][...] = [0.0, 1.25]
    path = exported(model, tmp_path)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops == ["PRelu", "Conv", "PRelu", "Add", "BatchNormalization"]
    x = np.random.default_rng(4).normal(size=(3,) + model.input_shape)
    assert rel_err(output_like(model, run_onnx(path, x)), model.predict(x)) <= TOL64
    from cnncc.onnx import load

    imported, weights = load(path)
    layers = {layer.name: layer for layer in imported.layers}
    assert layers["leak"].layer.alpha == 0.30953421291650424
    assert layers["conv"].layer.activation_kind == "leaky_relu"
    assert layers["norm"].layer.eps == 1e-5
    for key, array in weights.items():
        np.testing.assert_array_equal(array, model.params[key])


def _fuzz_cases():
    from test_fuzz import DETERMINISTIC, valid_specs

    return DETERMINISTIC, valid_specs


DETERMINISTIC, valid_specs = _fuzz_cases()


@settings(max_examples=25, deadline=None, **DETERMINISTIC)
@given(valid_specs())
def test_random_networks_from_the_fuzz_generator_export_and_run_the_same(build_dir, tmp_path_factory, case):
    spec, _ = case
    model = randomised(cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)))
    if model.program.output.is_input:
        return  # only views of the input: nothing runs in cnncc (test_fuzz covers that refusal)
    path = exported(model, tmp_path_factory.mktemp("fuzz"))
    x = np.random.default_rng(3).normal(size=(2,) + model.input_shape).astype(model.dtype)
    error = rel_err(output_like(model, run_onnx(path, x)), model.predict(x))
    assert error <= (TOL32 if model.dtype == np.float32 else TOL64), (error, yaml.safe_dump(spec))
    # and back: the same parameters and output shape (Identity, Dropout and flattens of flat
    # tensors vanish on import, and so does a dead branch, so the layer lists may be shorter)
    from cnncc.onnx import load

    imported, weights = load(path)
    assert cnncc.check(imported).rows[-1].output_shape == tuple(model.output_shape)
    dead = {layer.name for layer in cnncc.check(spec).net.dead_layers}
    assert set(weights) == {key for key in model.params if key.split(".")[0] not in dead}
    for key, array in weights.items():
        np.testing.assert_array_equal(array, model.params[key])


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnncc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_cnncc_export_command(build_dir, tmp_path):
    need_module("onnx", INSTALL)
    spec = ROOT / "specs" / "lenet5.yaml"
    model = randomised(cnncc.compile(spec, build_dir=build_dir))
    model.save(tmp_path / "w.npz")
    out = tmp_path / "lenet.onnx"
    done = cli("export", spec, "--weights", tmp_path / "w.npz", "-o", out, "--opset", "19", "--build-dir", build_dir,
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    x = np.random.default_rng(0).normal(size=(2,) + model.input_shape).astype(np.float32)
    assert rel_err(run_onnx(out, x), model.predict(x)) <= TOL32
    bad = cli("export", spec, "--weights", "w.npz", "-o", "x.onnx", "--opset", "11", cwd=tmp_path)
    assert bad.returncode == 2 and "ONNX opsets 13 to 21 are supported, got 11" in bad.stderr
    missing = cli("export", spec, "--weights", "nothere.npz", "-o", "x.onnx", "--build-dir", build_dir, cwd=tmp_path)
    assert missing.returncode == 1 and "no such file" in missing.stderr and "nothere.npz" in missing.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_every_registered_layer_kind_has_an_onnx_export():
    need_module("onnx", INSTALL)
    from cnncc.layers import REGISTRY
    from cnncc.onnx.exporter import EXPORTERS

    assert set(REGISTRY) <= set(EXPORTERS), sorted(set(REGISTRY) - set(EXPORTERS))


@pytest.mark.parametrize("case", sorted(interop_cases.SPECS))
def test_upsampling_kinds_in_every_opset_and_float64(case, build_dir, tmp_path):
    """ConvTranspose (groups, per-axis stride, pads, output_padding, dilations, no bias), Resize
    (nearest and linear, unequal scales) and GlobalMaxPool in every opset by onnxruntime, and by
    the reference evaluator in float64."""
    onnx = need_module("onnx", INSTALL)
    spec = interop_cases.SPECS[case]
    model = randomised(cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)))
    x = np.random.default_rng(4).normal(size=(2,) + model.input_shape).astype(np.float32)
    for opset in range(13, 22):
        path = exported(model, tmp_path, opset)
        assert rel_err(output_like(model, run_onnx(path, x)), model.predict(x)) <= TOL32, opset
    nodes = {node.name: node for node in onnx.load(str(path)).graph.node}
    if case == "upsampling":
        attrs = {name: {a.name: onnx.helper.get_attribute_value(a) for a in nodes[name].attribute}
                 for name in ("ct", "near", "bilin")}
        assert attrs["ct"] == {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 1, 0],
                               "output_padding": [1, 2], "dilations": [1, 2], "group": 2}
        assert attrs["near"] == {"mode": b"nearest", "coordinate_transformation_mode": b"asymmetric",
                                 "nearest_mode": b"floor"}
        assert attrs["bilin"] == {"mode": b"linear", "coordinate_transformation_mode": b"pytorch_half_pixel"}
    assert nodes["gmp"].op_type == "GlobalMaxPool" and nodes["gmp_flatten"].op_type == "Flatten"
    # float64: onnxruntime has no double ConvTranspose, and onnx's reference one slices a grouped
    # weight by output channels (onnx pull request 8446, after onnx 1.23): groups 1 here, groups 2
    # is onnxruntime's above
    wide = {**spec, "dtype": "float64",
            "layers": [{k: v for k, v in layer.items() if k != "groups"} for layer in spec["layers"]]}
    model64 = randomised(cnncc.compile(wide, build_dir=build_dir, cflags=("-O1",)))
    path = exported(model64, tmp_path)
    x64 = x.astype(np.float64)
    assert rel_err(output_like(model64, run_onnx(path, x64)), model64.predict(x64)) <= TOL64

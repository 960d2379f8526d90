"""Property-based fuzzing of the front end and of the whole pipeline.

1. Anything at all (text, bytes, nested Python structures made of the spec's own key and
   value vocabulary mixed with junk, valid networks with one to three things broken, and
   all of these as YAML) given to `load_spec` and `check` ends in a `Report` or a
   `SpecError` with a printable message, never in another exception, and fast.
2. Random valid networks (sequential and DAG, 2-D and 1-D, every layer kind) built with an
   independent model of the shape rules: `check` accepts every one and agrees with that
   model on every layer's output shape; a handful are compiled and run, and their output has
   the reported shape and is finite, as is the loss of a training step.

Every property runs derandomized without an example database, so CI is deterministic.
"""
from __future__ import annotations

import copy
import json
import math
import time
from datetime import timedelta

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import cnncc
from cnncc.layers import REGISTRY
from cnncc.layers.conv import ACTIVATIONS
from cnncc.spec import INPUT_FIELDS, LOSSES, TOP_FIELDS, TRAINING_FIELDS

FAST = timedelta(seconds=2)  # per example; a check takes milliseconds
DETERMINISTIC = dict(derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

# ---- 1. arbitrary input ------------------------------------------------------------------

KEYS = sorted({*TOP_FIELDS, *INPUT_FIELDS, *TRAINING_FIELDS, "type", "name", "inputs", "lr", "momentum",
               "nesterov", "beta1", "beta2", "eps", "weight_decay",
               *(key for kind in REGISTRY.values() for key in kind.fields)})
WORDS = sorted({*REGISTRY, *ACTIVATIONS, *LOSSES, "same", "valid", "sgd", "adam", "float32", "float64",
                "float16", "constant", "step", "cosine", "input", "conv1", "x", "", " ", "NaN", "1e3", "*/",
                "a\nb", "#include <stdio.h>", "$(true)", "\x1b[31m"})
SPECIAL_INTS = [0, 1, -1, 2, 3, (1 << 20), (1 << 20) + 1, (1 << 31) - 1, 1 << 31, (1 << 63), -(1 << 63), 10 ** 100, 10 ** 400]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(), st.sampled_from(SPECIAL_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=12))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                      st.dictionaries(keys, inner, max_size=6)), max_leaves=40)


def _layer_dicts():
    def one(kind):
        fields = sorted(REGISTRY[kind].fields)
        return st.fixed_dictionaries(
            {"type": st.just(kind)},
            optional={"name": st.one_of(st.sampled_from(WORDS), st.text(max_size=6)),
                      "inputs": st.one_of(st.lists(st.sampled_from(["input", "conv1", "x"]), max_size=3), trees),
                      **{f: st.one_of(st.integers(0, 6), st.sampled_from(["same", "valid", *ACTIVATIONS]),
                                      st.lists(st.integers(0, 4), max_size=3), st.floats(0, 1), scalars)
                         for f in fields},
                      "junk": trees})
    return st.one_of(*(one(kind) for kind in sorted(REGISTRY)), trees)


# Spec-shaped structures get past the front door into the checker; the rest tests the door.
spec_like = st.fixed_dictionaries(
    {"name": st.one_of(st.just("net"), scalars),
     "input": st.one_of(st.fixed_dictionaries({"channels": st.integers(-1, 5)},
                                              optional={"height": st.integers(-1, 12), "width": st.integers(-1, 12),
                                                        "length": st.integers(-1, 30)}), trees),
     "layers": st.one_of(st.lists(_layer_dicts(), max_size=6), trees)},
    optional={"dtype": st.one_of(st.sampled_from(["float32", "float64"]), scalars),
              "loss": st.one_of(st.sampled_from(tuple(LOSSES)), scalars),
              "optimizer": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["sgd", "adam"])},
                                                           optional={"lr": scalars, "momentum": scalars,
                                                                     "nesterov": scalars}), trees),
              "training": st.one_of(st.dictionaries(st.sampled_from(sorted(TRAINING_FIELDS)), scalars), trees),
              "junk": trees})


def outcome(source):
    """check(source): a Report that renders, or a SpecError that says something printable."""
    try:
        report = cnncc.check(source)
    except cnncc.SpecError as exc:
        text = exc.format()
        assert exc.diagnostics and text
        # A spec never gets a raw control character (a terminal escape, a NUL) into an error.
        assert all(ch.isprintable() or ch == "\n" for ch in text), text
        return None
    assert isinstance(report, cnncc.Report)
    assert report.rows and report.to_text() and report.to_json()
    return report


@settings(max_examples=300, deadline=FAST, **DETERMINISTIC)
@given(st.text())
@example("name: a\ninput: &a [*a]")
@example("\t")
@example("x: !!python/object/apply:os.system ['true']")
@example("- " * 40 + "x")
@example("a: " + "[" * 200)
@example("\ufeffname: x")
def test_any_text_is_a_report_or_a_spec_error(text):
    outcome(text)


@settings(max_examples=200, deadline=FAST, **DETERMINISTIC)
@given(st.binary())
@example(b"\xff\xfe\x00n\x00a")
@example(b"name: \xc3")
def test_any_bytes_are_a_report_or_a_spec_error(data):
    outcome(data)


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)], ids=["1e400", "-1e400"])
def test_an_integer_past_the_double_range_in_a_number_field_is_a_spec_error(value):
    spec = {"name": "x", "input": {"channels": 1, "length": 4}, "layers": [{"type": "relu"}],
            "optimizer": {"type": "adam", "lr": value}}
    with pytest.raises(cnncc.SpecError):
        cnncc.check(spec)


HOSTILE = {
    # an alias bomb ("billion laughs"): 10 levels of 10x
    "alias_bomb": "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9)),
    "deep_lists": "[" * 10_000 + "]" * 10_000,  # nesting far past the depth limit
    "deep_maps": "{a: " * 5_000 + "1" + "}" * 5_000,
    "over_the_size_limit": "name: x\nlayers:\n" + "  - {type: relu}\n" * 17_000,
    "long_scalar": "a: " + "x" * (256 << 10),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_yaml_fails_fast(text):
    start = time.perf_counter()
    with pytest.raises(cnncc.SpecError):
        cnncc.check(text)
    assert time.perf_counter() - start < 2.0


# ---- 2. the valid space ------------------------------------------------------------------

def _out(n, k, s, p, d=1):
    """The notes' floor((n + 2p - d(k-1) - 1)/s) + 1, written again here on purpose."""
    if p == "same":
        return -(-n // s)
    p = 0 if p == "valid" else p
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def _axis(draw, n, pool):
    """(kernel, stride, padding, dilation) for one axis of length n that gives an output >= 1."""
    dilation = 1 if pool else draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2 if pool else 2))  # pool padding: at most half the kernel
    while dilation * (kernel - 1) + 1 > n + 2 * padding:  # too big for this axis: shrink it
        kernel, dilation = kernel - 1, 1
        padding = min(padding, kernel // 2) if pool else padding
    return kernel, draw(st.integers(1, 3)), padding, dilation


def _window_layer(draw, kind, current, one_d):
    """A conv or pool layer on `current` and its output shape."""
    pool = not kind.startswith("conv")
    axes = [draw(_axis(n, pool)) for n in current[1:]]
    default_stride = pool and draw(st.booleans())
    if default_stride:
        axes = [(k, k, p, d) for k, _, p, d in axes]

    def value(i):  # one axis: an int; two: [h, w], or one int when they agree
        values = [axis[i] for axis in axes]
        return values[0] if one_d or (values[0] == values[1] and draw(st.booleans())) else values

    mode = draw(st.sampled_from(["explicit", "explicit", "same", "valid"]))
    if mode == "valid" and any(axis[2] for axis in axes):
        mode = "explicit"
    layer = {"type": kind, "kernel": value(0), "padding": value(2) if mode == "explicit" else mode}
    if not default_stride:
        layer["stride"] = value(1)
    if not pool:
        layer["dilation"] = value(3)
    spatial = tuple(_out(n, k, s, "same" if mode == "same" else p, d) for n, (k, s, p, d) in zip(current[1:], axes))
    channels = current[0]
    if not pool:
        groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if channels % g == 0]))
        channels = groups * draw(st.integers(1, 3))
        layer.update(filters=channels, groups=groups, bias=draw(st.booleans()),
                     activation=draw(st.sampled_from(ACTIVATIONS)))
    return layer, (channels,) + spatial


@st.composite
def valid_specs(draw):
    """(spec dict, the output shape of every layer) of a random valid network."""
    one_d = draw(st.booleans())
    c = draw(st.integers(1, 4))
    if one_d:
        current = (c, draw(st.integers(1, 24)))
        spec_input = {"channels": c, "length": current[1]}
    else:
        current = (c, draw(st.integers(1, 10)), draw(st.integers(1, 10)))
        spec_input = {"channels": c, "height": current[1], "width": current[2]}
    named = {"input": current}  # what a later layer may list in `inputs`, and its shape
    layers, shapes = [], []

    for index in range(draw(st.integers(1, 7))):
        rank = len(current)
        kinds = ["batchnorm", "relu", "leaky_relu", "sigmoid", "tanh", "linear", "softmax", "dropout", "add",
                 "concat", "flatten"]
        kinds += {3: ["conv2d", "maxpool2d", "avgpool2d", "global_avgpool"],
                  2: ["conv1d", "maxpool1d", "avgpool1d", "global_avgpool"], 1: ["dense"]}[rank]
        kind = draw(st.sampled_from(kinds))
        layer = {"type": kind}
        previous = "input" if not layers else layers[-1].get("name")
        if kind in ("add", "concat"):
            # A branch: the previous layer if it can be named, else any named earlier tensor.
            first = previous if previous is not None and draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(named)))
            shape = named[first]
            fits = sorted(name for name, s in named.items()
                          if (s == shape if kind == "add" else (len(s) == len(shape) and s[1:] == shape[1:])))
            layer["inputs"] = [first, *draw(st.lists(st.sampled_from(fits), min_size=1, max_size=2))]
            out = shape if kind == "add" else (sum(named[n][0] for n in layer["inputs"]),) + shape[1:]
        elif kind in ("conv2d", "conv1d", "maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d"):
            layer, out = _window_layer(draw, kind, current, one_d)
        elif kind == "dense":
            layer.update(units=draw(st.integers(1, 12)), bias=draw(st.booleans()),
                         activation=draw(st.sampled_from(ACTIVATIONS)))
            out = (layer["units"],)
        elif kind == "flatten":
            out = (math.prod(current),)
        elif kind == "global_avgpool":
            out = (current[0],)
        else:
            if kind == "leaky_relu":
                layer["alpha"] = draw(st.floats(0, 1))
            elif kind == "dropout":
                layer["rate"] = draw(st.floats(0, 0.9))
            elif kind == "batchnorm" and draw(st.booleans()):
                layer.update(momentum=draw(st.floats(0, 1)), eps=draw(st.floats(1e-6, 1e-2)))
            out = current
        if draw(st.integers(0, 3)):  # most layers get a name; the others a default one
            layer["name"] = draw(st.sampled_from([f"n{index}", f"N{index}_x", f"layer_{index}"]))
            named[layer["name"]] = out
        layers.append(layer)
        shapes.append(out)
        current = out

    spec = {"name": f"fz_{draw(st.from_regex(r'[a-z0-9]([a-z0-9_]{0,6}[a-z0-9])?', fullmatch=True))}", "input": spec_input,
            "dtype": draw(st.sampled_from(["float32", "float64"])), "layers": layers}
    head = draw(st.sampled_from(["none", "softmax_cross_entropy", "mse", "binary_cross_entropy"]))
    if head in ("mse", "binary_cross_entropy") and all(l["type"] in ("linear", "flatten") for l in layers):
        # Only views of the input so far: a loss needs a network that computes something.
        layers.append({"type": "tanh"})
        shapes.append(current)
    if head == "softmax_cross_entropy":
        if len(current) > 1:
            kind = draw(st.sampled_from(["flatten", "global_avgpool"]))
            layers.append({"type": kind})
            shapes.append((math.prod(current),) if kind == "flatten" else (current[0],))
        classes = draw(st.integers(2, 5))
        layers.append({"type": "dense", "units": classes, "activation": draw(st.sampled_from(["linear", "relu"]))})
        shapes.append((classes,))
    elif head == "binary_cross_entropy":
        layers.append({"type": "sigmoid"})
        shapes.append(current)
    if head != "none":
        spec["loss"] = head
        spec["optimizer"] = draw(st.sampled_from([
            {"type": "adam", "lr": 0.001}, {"type": "sgd", "lr": 0.01},
            {"type": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.001}]))
    return spec, shapes


# ---- 3. near misses, and any structure -------------------------------------------------
def _paths(node, prefix=()):
    """Every place in a nested spec: (path, container) pairs, the root included."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


@st.composite
def mutated_specs(draw):
    """A valid network with one to three things broken: a value replaced by junk or a near miss,
    a key dropped or added. These get past the front door and exercise the checker."""
    spec = copy.deepcopy(draw(valid_specs())[0])
    for _ in range(draw(st.integers(1, 3))):
        places = list(_paths(spec))[1:]
        places.sort(key=lambda path: (path[0] != "layers", -len(path)))  # layer fields first: they matter most
        path = draw(st.sampled_from(places))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "near", "drop", "add"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(scalars)
        elif action == "near" and isinstance(parent[path[-1]], int) and not isinstance(parent[path[-1]], bool):
            parent[path[-1]] += draw(st.sampled_from([-2, -1, 1, 7, 1 << 20, 1 << 31]))
        else:
            parent[path[-1]] = draw(st.one_of(scalars, trees, st.sampled_from(sorted(REGISTRY))))
    return spec


# From Python a spec is a dict (anything else is a TypeError, a programming error); as YAML, anything.
structures = st.one_of(spec_like, mutated_specs(),
                       st.dictionaries(st.one_of(keys, st.integers()), trees, max_size=6))


@settings(max_examples=400, deadline=FAST, **DETERMINISTIC)
@given(structures)
def test_any_structure_is_a_report_or_a_spec_error(tree):
    outcome(tree)


@settings(max_examples=200, deadline=FAST, **DETERMINISTIC)
@given(st.one_of(structures, trees))
def test_any_structure_as_yaml_is_a_report_or_a_spec_error(tree):
    outcome(yaml.safe_dump(tree, allow_unicode=True))


@settings(max_examples=250, deadline=FAST, **DETERMINISTIC)
@given(valid_specs())
def test_valid_networks_check_with_the_expected_shapes(case):
    spec, expected = case
    report = cnncc.check(spec)
    assert [row.output_shape for row in report.rows] == expected, yaml.safe_dump(spec)
    assert [tuple(layer["output_shape"]) for layer in json.loads(report.to_json())["layers"]] == expected
    assert report.totals["params"] == sum(row.params for row in report.rows)


@settings(max_examples=15, deadline=None, **DETERMINISTIC)
@given(valid_specs())
def test_valid_networks_compile_and_run(build_dir, case):
    spec, _ = case
    report = cnncc.check(spec)
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)).init(1)
    x = np.random.default_rng(0).normal(size=(3,) + model.input_shape)
    if model.program.output.is_input:  # only views of the input (flatten, linear): nothing to run
        with pytest.raises(ValueError, match="no operations"):
            model.forward(x)
        return
    y = model.forward(x)
    assert y.shape == (3,) + report.rows[-1].output_shape
    assert np.isfinite(y).all()
    if model.program.loss is not None:
        if model.program.loss.takes_labels:
            targets = np.array([0, 1, 1])
        else:
            targets = np.random.default_rng(1).uniform(0, 1, y.shape)
        loss = model.train_step(x, targets)
        assert math.isfinite(loss)
        assert np.isfinite(model.forward(x)).all()


# ---- 3. the classes of issue 18: names, weight files, metadata -------------------------------

def _collision_names():
    from test_names import REFUSED, name_list

    return name_list(), REFUSED


COLLISION_NAMES, REFUSED_NAMES = _collision_names()
names = st.one_of(st.sampled_from(COLLISION_NAMES), st.sampled_from(REFUSED_NAMES),
                  st.builds(lambda a, b: f"{a}_{b}", st.sampled_from(COLLISION_NAMES), st.sampled_from(COLLISION_NAMES)),
                  st.builds(lambda a, b: f"{a}{b}", st.sampled_from(["", "_", "__", "cnncc_", "CNNCC"]),
                            st.sampled_from(COLLISION_NAMES)))


def _named_spec(model: str, layer_names: list[str]) -> dict:
    kinds = [{"type": "conv2d", "filters": 2, "kernel": 1}, {"type": "batchnorm"}, {"type": "relu"}]
    return {"name": model, "input": {"channels": 1, "height": 3, "width": 3},
            "layers": [{"name": n, **kinds[i % 3]} for i, n in enumerate(layer_names)]
                      + [{"type": "flatten"}, {"type": "dense", "units": 2}], "loss": "mse"}


@settings(max_examples=300, deadline=FAST, **DETERMINISTIC)
@given(names, st.lists(names, max_size=4))
def test_names_from_the_collision_list_are_checked_or_refused(model, layer_names):
    try:
        report = cnncc.check(_named_spec(model, layer_names))
    except cnncc.SpecError as exc:
        assert str(exc).strip()
        return
    assert report.program.name == model


@settings(max_examples=12, deadline=None, **DETERMINISTIC)
@given(names, st.lists(names, min_size=1, max_size=4))
def test_accepted_collision_names_render_c_that_compiles(tmp_path_factory, model, layer_names):
    import shutil
    import subprocess

    from cnncc.codegen import render

    try:
        program = cnncc.check(_named_spec(model, layer_names)).program
    except cnncc.SpecError:
        return
    sources = render(program)
    directory = tmp_path_factory.mktemp("names")
    (directory / f"{model}.h").write_text(sources.header)
    (directory / f"{model}.c").write_text(sources.source)
    result = subprocess.run([shutil.which("gcc") or "cc", "-std=c99", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                             str(directory / f"{model}.c")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


_WEIGHTS_SPEC = {"name": "fuzz_weights", "input": {"channels": 1, "length": 3},
                 "layers": [{"type": "flatten"}, {"name": "out", "type": "dense", "units": 2}],
                 "loss": "mse", "optimizer": {"type": "adam"}}
_WEIGHTS_MODEL = []


def _weights_model():
    """One compiled model for every example (hypothesis reruns the test body, not fixtures)."""
    if not _WEIGHTS_MODEL:
        import tempfile

        model = cnncc.compile(_WEIGHTS_SPEC, build_dir=tempfile.mkdtemp(prefix="cnncc-fuzz-"), cflags=("-O0",))
        model.train_step(np.ones((2, 1, 3)), np.ones((2, 2)))
        _WEIGHTS_MODEL.append(model)
    return _WEIGHTS_MODEL[0]


DTYPES = ["f2", "f4", "f8", "g", "i4", "u1", "c8", "U3", "S2", "?", [("a", "f4")], [("a", "f8"), ("b", "i2")]]
magnitudes = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [1e300, -1e300, 3.5e38, 3.4e38, 1e-300, 5e-324, 1e-45, 1.2e-38, 0.0, -0.0]))


@st.composite
def forged_arrays(draw, shape):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    values = draw(st.lists(magnitudes, min_size=1, max_size=4))
    flat = np.resize(np.array(values, dtype=np.float64), int(np.prod(shape)))
    with np.errstate(all="ignore"):
        try:
            return flat.astype(dtype).reshape(shape) if dtype.fields is None else np.zeros(shape, dtype)
        except (ValueError, TypeError):
            return np.zeros(shape, dtype)


metadata = st.one_of(
    trees,
    st.fixed_dictionaries({"format": st.just("cnncc-weights-1")},
                          optional={"step": scalars, "epoch": scalars, "spec": scalars, "dtype": scalars,
                                    "fingerprint": scalars, "optimizer": scalars, "extra": scalars}))


@settings(max_examples=250, deadline=None, **DETERMINISTIC)
@given(st.data())
def test_forged_weight_files_load_cleanly_or_leave_the_model_unchanged(tmp_path_factory, data):
    from cnncc.checkpoint import META_KEY, STATE_KEY, CheckpointError

    model = _weights_model()
    path = tmp_path_factory.mktemp("forged") / "w.npz"
    model.save(path)
    arrays = dict(np.load(path))
    for key in data.draw(st.lists(st.sampled_from(sorted(arrays)), unique=True, max_size=3)):
        if key == META_KEY:
            meta = data.draw(metadata)
            try:
                text = json.dumps(meta, allow_nan=True)
            except (TypeError, ValueError):
                text = str(meta)
            arrays[key] = np.frombuffer(text.encode(), np.uint8)
        else:
            arrays[key] = data.draw(forged_arrays(arrays[key].shape))
    if data.draw(st.booleans()):
        arrays.pop(data.draw(st.sampled_from(sorted(arrays))))
    np.savez(path, **arrays)
    before = (model._params.copy(), model._optimizer_state.copy(), model.step_count)
    try:
        model.load(path)
    except CheckpointError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        assert np.array_equal(model._params, before[0]) and np.array_equal(model._optimizer_state, before[1])
        assert model.step_count == before[2]
    else:
        assert np.isfinite(model._params).all() and np.isfinite(model._optimizer_state).all()
        assert isinstance(model.step_count, int) and 0 <= model.step_count < 2**31
        for key, view in model.params.items():
            with np.errstate(all="ignore"):
                assert np.array_equal(view, np.asarray(arrays[key]).astype(view.dtype))
        state = arrays.get(STATE_KEY)
        if state is not None and state.shape == model._optimizer_state.shape:
            with np.errstate(all="ignore"):
                assert np.array_equal(model._optimizer_state, state.astype(model._optimizer_state.dtype))
    finally:
        model._params[...], model._optimizer_state[...] = before[0], before[1]
        model.step_count = before[2]


# ---- 5. random fit and evaluate arguments ---------------------------------------------------

FIT_SPEC = {"name": "fuzz_fit", "input": {"channels": 1, "height": 4, "width": 4},
            "layers": [{"name": "conv", "type": "conv2d", "filters": 2, "kernel": 3, "activation": "relu"},
                       {"type": "flatten"}, {"name": "out", "type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy", "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 1, "batch_size": 4}}
FIT_X = np.random.default_rng(5).normal(size=(8, 1, 4, 4))
FIT_Y = np.arange(8) % 3
NAN = float("nan")
# For each argument: good values, wrong types, out-of-range and non-finite numbers, numpy scalars.
FIT_VALUES = {
    "epochs": [None, 1, 2, 0, -1, 1.5, True, "1", 2**63, np.int64(2), [1]],
    "batch_size": [None, 1, 3, 100, 0, -2, 2.0, "4", True, 2**40, np.int32(2)],
    "validation_data": [None, (FIT_X[:2], FIT_Y[:2]), (FIT_X[:2],), "x", (FIT_X[:2], FIT_Y[:3]),
                        (FIT_X[:2] * NAN, FIT_Y[:2]), (FIT_X[:2], np.array([0, 7])), (FIT_X[:0], FIT_Y[:0])],
    "shuffle": [True, False, "no", 1, None],
    "seed": [0, None, 7, -1, 2**64, 1.5, "3", np.uint64(5)],
    "verbose": [0, 2, -1, 5, "0", None, True],
    "lr": [None, 0.01, 0, -1.0, NAN, float("inf"), 1e-50, 1e39, "0.1", True, np.float32(0.02)],
    "schedule": [None, "constant", "cosine", "bogus", 3],
    "initial_epoch": [0, 1, -1, 5, 0.5, True],
    "validation_split": [None, 0.25, 0, 1, 1.5, -0.1, NAN, "0.2"],
}


@pytest.fixture(scope="module")
def fit_model(build_dir):
    return cnncc.compile(FIT_SPEC, build_dir=build_dir, cflags=("-O1",)).init(0)


@settings(max_examples=150, deadline=None, **DETERMINISTIC)
@given(st.fixed_dictionaries({}, optional={key: st.sampled_from(values) for key, values in FIT_VALUES.items()}))
def test_random_fit_arguments_train_or_are_refused_leaving_the_model_as_it_was(fit_model, arguments):
    """fit with any mix of good and bad arguments either trains (finite losses) or raises
    ValueError/TypeError having changed nothing: weights, optimizer state and step count."""
    import contextlib
    import io

    model = fit_model
    before = (model.flat_params.copy(), model.flat_optimizer_state.copy(), model.step_count, dict(model.hyper))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            history = model.fit(FIT_X, FIT_Y, **arguments)
    except (ValueError, TypeError) as exc:
        assert str(exc), arguments
        params, state, step, hyper = before
        assert np.array_equal(model.flat_params, params) and np.array_equal(model.flat_optimizer_state, state)
        assert model.step_count == step and model.hyper == hyper, arguments
        return
    if not len(history):  # initial_epoch at or past epochs: nothing to train, as in Keras
        assert np.array_equal(model.flat_params, before[0]) and model.step_count == before[2], arguments
    else:
        assert all(math.isfinite(v) for v in history["loss"]), arguments
    assert np.isfinite(model.flat_params).all()
    model.hyper.update(before[3])  # the next example starts from the spec's lr


@settings(max_examples=60, deadline=None, **DETERMINISTIC)
@given(st.sampled_from(FIT_VALUES["batch_size"] + [None]), st.sampled_from([FIT_Y, FIT_Y[:3], FIT_Y + 3, None]))
def test_random_evaluate_arguments_give_metrics_or_a_clear_error(fit_model, batch_size, labels):
    model = fit_model
    before = model.flat_params.copy()
    arguments = {} if batch_size is None else {"batch_size": batch_size}
    try:
        metrics = model.evaluate(FIT_X, labels, **arguments)
    except (ValueError, TypeError) as exc:
        assert str(exc)
    else:
        assert math.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1
    assert np.array_equal(model.flat_params, before)

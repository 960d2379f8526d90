"""The structure of the generated C: one template per layer kind, and a macro namespace in
which names from a spec can never collide with the model's own macros or kernel constants."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnncc
from cnncc import codegen, ir
from cnncc.layers import REGISTRY
from conftest import defined_macros

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def test_every_kind_has_a_template_and_every_template_a_kind():
    """Every kind's planner (on every backend) picks only templates that exist, and every layer
    template is one some kind's planner may pick."""
    from cnncc.backends import BACKENDS

    layer_templates = {f"layers/{p.name[: -len('.c.j2')]}" for p in (codegen.template_dir() / "layers").glob("*.c.j2")}
    used = {template for backend in BACKENDS.values() for kind, cls in REGISTRY.items() if cls.template is not None
            for template in backend().planner(kind).templates}
    assert used <= layer_templates, f"kinds without a template: {used - layer_templates}"
    assert layer_templates <= used, f"templates without a kind: {layer_templates - used}"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_header_macros_are_the_public_ones(path):
    report = cnncc.check(path)
    header = codegen.render(report.program, str(path)).header
    prefix = report.spec.name.upper() + "_"
    guard = f"CNNCC_{prefix}H"  # in the generated prefix no spec name may take
    for name in re.findall(r"^#define\s+(\w+)", header, re.MULTILINE):
        assert name == guard or (name.startswith(prefix) and name[len(prefix):] in ir.PUBLIC_MACRO_SUFFIXES), name


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_kernel_constants_never_use_a_per_op_macro_prefix(path):
    for op in cnncc.check(path).program.ops:
        for name in op.plan.dims:
            assert not name.startswith(ir.MACRO_PREFIXES), (op.name, name)


@pytest.mark.parametrize("model,layer", [("a", "num_trainable"), ("a", "h"), ("ws", "batch"), ("m", "in"),
                                         ("m", "out")])
def test_op_names_steer_clear_of_public_macros(model, layer):
    spec = {"name": model, "input": {"channels": 1, "height": 6, "width": 6},
            "layers": [{"name": layer, "type": "batchnorm"}, {"type": "flatten"}, {"type": "dense", "units": 2}],
            "loss": "mse"}
    program = cnncc.check(spec).program
    public = {f"{model.upper()}_{s}" for s in ir.PUBLIC_MACRO_SUFFIXES}
    for op in program.ops:
        assert op.output.macro not in public and f"WS_{op.name.upper()}" not in public
    sources = codegen.render(program)
    defined = defined_macros(sources.header + sources.source)
    assert len(defined) == len(set(defined))


def test_a_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    from cnncc import build

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no gcc, cc or clang
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(build.BuildError, match=r"no C compiler found.*apt-get install gcc"):
        cnncc.compile(ROOT / "specs" / "lenet5.yaml", build_dir=tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_readme_spec_reference_is_the_generated_one():
    """The README embeds `cnncc layers` verbatim: a new field or kind without docs fails here."""
    from cnncc.reference import spec_reference_markdown

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- spec-reference:start")
    body = readme[readme.index("\n", start) + 1: readme.index("<!-- spec-reference:end -->")]
    assert body == spec_reference_markdown()
    for kind in REGISTRY:
        assert f"`{kind}`" in body


# ---- the generated C's shape: kernels name only what they read, banners fit 100 columns ---------
def _conv_variants():
    """Small nets that between them take every branch of the conv templates: shifted with and
    without padding, one tap wide or wider, few filters (dot products) or many, a first layer (no
    input gradient) and a later one; im2col likewise; grouped and dilated; pooled backwards."""
    nets = []
    for conv in ({"kernel": 3, "padding": 1}, {"kernel": 1}, {"kernel": [3, 1]}, {"kernel": 3, "stride": 2},
                 {"kernel": 3, "stride": 2, "padding": 1, "bias": False}, {"kernel": 3, "dilation": 2},
                 {"kernel": 3, "groups": 2, "padding": "same"}):
        for filters in (4, 16):
            layers = [{"type": "conv2d", "filters": filters, "activation": "relu", **conv},
                      {"type": "conv2d", "filters": filters, **conv}, {"type": "maxpool2d", "kernel": 2},
                      {"type": "flatten"}, {"type": "dense", "units": 3}]
            nets.append({"name": "variant", "input": {"channels": 2, "height": 16, "width": 16},
                         "layers": layers, "loss": "softmax_cross_entropy"})
    return nets


def _rendered_sources():
    for path in SPECS:
        for threads in (1, 2):
            yield codegen.render(cnncc.check(path, threads=threads).program, str(path)).source
    for net in _conv_variants():
        yield codegen.render(cnncc.check(net).program).source


def _functions(source: str):
    """(name, body) of every function the kernels define."""
    for match in re.finditer(r"^(?:static|KERNEL_INLINE)[^\n]*?(\w+)\(\n(.*?)^\}", source, re.MULTILINE | re.DOTALL):
        yield match.group(1), match.group(2)


def test_every_kernel_enum_names_only_constants_the_kernel_reads():
    checked = 0
    for source in _rendered_sources():
        for name, body in _functions(source):
            enum = re.search(r"enum \{\n(.*?)\};", body, re.DOTALL)
            if not enum:
                continue
            rest = body[:enum.start()] + body[enum.end():]
            constants = re.findall(r"^\s+([A-Z][A-Z0-9_]*) = ", enum.group(1), re.MULTILINE)
            unread = [c for c in constants if not re.search(rf"\b{c}\b", rest)]
            assert not unread, f"{name} names {unread} but never reads them"
            checked += 1
    assert checked > 100


def test_kernels_take_their_tensors_as_arguments_and_banners_fit_100_columns():
    for source in _rendered_sources():
        assert "run_state" not in source and "run->" not in source
        for number, line in enumerate(source.splitlines(), 1):
            if line.startswith(("/*", " *")):  # banners and file comments (not code lines)
                assert len(line) <= 100, f"line {number} has {len(line)} columns: {line[:60]}..."


def test_transformed_filters_past_a_devices_bound_go_by_f4_on_the_host_only():
    """F(4x4)'s transformed filters are 36 x C_IN x C_OUT floats. VGG's 64->128 and 128->128 convs
    (1.2 and 2.4 MB of them) are past the 1 MB a device build keeps them to (its RAM) and within
    the host's 4 MB: the Python module plans them by F(4x4), `cnncc emit` by F(2x2), and the
    report's deployment figures are those of the program emit writes."""
    from cnncc.memplan import deployment_figures
    from cnncc.pipeline import analyse, emit_options

    spec = ROOT / "specs" / "vgg_cifar.yaml"
    host, device = analyse(spec), analyse(spec, emit_options("vector"))

    def tiles(analysis):
        return {op.name: op.plan.settings["winograd_tile"] for op in analysis.program.ops if op.kind == "conv2d"}

    assert tiles(host) == {"conv1_1": 0, "conv1_2": 4, "conv2_1": 4, "conv2_2": 4}
    assert tiles(device) == {"conv1_1": 0, "conv1_2": 4, "conv2_1": 2, "conv2_2": 2}
    assert host.program.workspace_size > device.program.workspace_size
    emitted = deployment_figures(device.program, 1)["arena_bytes"]
    assert host.report.totals["arena_bytes"] == device.report.totals["arena_bytes"] == emitted
    assert cnncc.check(spec).totals["arena_bytes"] == emitted


def test_emit_for_the_host_plans_as_the_python_module(tmp_path, capsys):
    """`cnncc emit --host` (for_device=False) writes the program the Python module runs: VGG's
    128-channel convs by F(4x4), where the default emit keeps them within a device's bound."""
    from cnncc.cli import main
    from cnncc.emit import emit

    spec = ROOT / "specs" / "vgg_cifar.yaml"

    def tiles(program):
        return [op.plan.settings["winograd_tile"] for op in program.ops if op.kind == "conv2d"]

    assert tiles(emit(spec, tmp_path / "host", inference_only=True, for_device=False).program) == [0, 4, 4, 4]
    assert tiles(emit(spec, tmp_path / "device", inference_only=True).program) == [0, 4, 2, 2]
    assert main(["emit", str(spec), "-o", str(tmp_path / "cli"), "--host", "--inference-only"]) == 0
    host_c = (tmp_path / "host" / "vgg_cifar.c").read_text()
    assert (tmp_path / "cli" / "vgg_cifar.c").read_text() == host_c != (tmp_path / "device" / "vgg_cifar.c").read_text()
    for extra in (["--board", "mps2-an386"], ["--int8", str(tmp_path / "q.npz")]):
        assert main(["emit", str(spec), "-o", str(tmp_path / "refused"), "--host", *extra]) == 1
        assert "--host does not apply" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

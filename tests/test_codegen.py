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
    for name in re.findall(r"^#define\s+(\w+)", header, re.MULTILINE):
        assert name.startswith(prefix) and name[len(prefix):] in ir.PUBLIC_MACRO_SUFFIXES, name


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

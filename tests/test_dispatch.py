"""Nothing in cnncc/ dispatches on a kind's name: what differs between layer kinds, losses,
optimizers and backends is a property of their registered classes (or a planner's), looked up
through the registries, never a comparison with a name string."""
from __future__ import annotations

import re
from pathlib import Path

from cnncc.backends import BACKENDS
from cnncc.layers import REGISTRY
from cnncc.losses import LOSSES
from cnncc.optimizers import OPTIMIZERS

PACKAGE = Path(__file__).resolve().parents[1] / "cnncc"
NAMES = sorted(set(REGISTRY) | set(LOSSES) | set(OPTIMIZERS) | set(BACKENDS), key=len, reverse=True)
QUOTED = r"""(?P<quote>["'])(?:""" + "|".join(map(re.escape, NAMES)) + r""")(?P=quote)"""
COMPARISONS = [
    re.compile(r"(?<!dtype\.)\bkind\s*(==|!=)"),  # numpy's dtype.kind is a type code, not a kind
    re.compile(r"(?<!dtype\.)\bkind\s+(not\s+)?in\s*[(\[{]"),
    re.compile(r"(==|!=)\s*" + QUOTED),
    re.compile(QUOTED + r"\s*(==|!=)"),
    re.compile(r"\bin\s*[(\[{][^)\]}]*" + QUOTED),
]


def comparisons_in(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in COMPARISONS)]


def test_the_patterns_catch_what_they_are_for():
    caught = ['if pool.kind in ("maxpool2d", "maxpool1d"):', 'if conv.kind == "conv2d":', 'if activation != "sigmoid":',
              'init = "he" if self.activation in ("relu", "leaky_relu") else "xavier"', 'if "adam" == name:']
    assert comparisons_in("\n".join(caught)) == caught
    assert comparisons_in('kind = "relu"\nif y.dtype.kind == "f":\nACTIVATIONS = ("relu", "tanh")') == []


# Translators between cnncc and other formats, whose vocabulary is the kinds themselves (an ONNX
# op per kind, a torch module per kind, an int8 op per kind; datasets name their formats). They
# are still to become per-kind translation tables; the compiler proper must not compare names.
TRANSLATORS = ("onnx", "torch", "quantize", "datasets")


def test_no_module_compares_a_kind_with_a_name():
    found = {str(p.relative_to(PACKAGE)): hits for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).parts[0] not in TRANSLATORS and (hits := comparisons_in(p.read_text()))}
    assert found == {}

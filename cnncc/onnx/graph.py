"""What the importer knows about each ONNX value, and how it names and reports things.

A value is an activation (`Act`: made by a cnncc layer, or the network input), a constant
(`fold.Const`), or an activation waiting for the Conv or pool that absorbs its Pad (`Padded`).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

MAX_NAME = 64  # spec names are C identifiers of at most 64 characters
RESERVED = ("input",)


class UnsupportedModel(ValueError):
    """An ONNX graph cnncc cannot express: the message names the node, its op type and inputs,
    and what cnncc supports."""


@dataclass(frozen=True)
class Act:
    layer: str  # the spec layer that computes it ("input": the network input)
    shape: tuple[int, ...]  # ONNX's shape of one sample
    flat: bool = False  # cnncc's tensor is flat where ONNX keeps 1s (a global pool's C x 1 x 1)

    @property
    def cnncc_shape(self) -> tuple[int, ...]:
        if self.flat or len(self.shape) == 1:
            n = 1
            for d in self.shape:
                n *= d
            return (n,)
        return self.shape


@dataclass(frozen=True)
class Padded:
    """A Pad's output: `act` with extra padding on its spatial axes, for the next Conv or pool."""
    act: Act
    begins: tuple[int, ...]
    ends: tuple[int, ...]
    value: float
    node: str


def describe(node) -> str:
    """How an error names a node: its name, op type and inputs."""
    name = f"'{node.name}' " if node.name else ""
    inputs = ", ".join(i or "<none>" for i in node.input)
    return f"node {name}({node.op_type}, inputs: {inputs or 'none'})"


def attributes(node, tensors) -> dict:
    """The node's attributes; tensor-valued ones as arrays, read (and checked) by `tensors`."""
    from .reader import onnx

    values = {}
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR:
            values[attribute.name] = tensors.array(attribute.t)
        elif attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            values[attribute.name] = None  # subgraphs (If, Loop): no op cnncc imports has them
        else:
            values[attribute.name] = onnx.helper.get_attribute_value(attribute)
    return values


def _label(node) -> str:
    """A readable name for the layer a node becomes: the module path the exporter recorded (dynamo's
    name_scopes, TorchScript's /conv1/Conv), else the node's name, else its output's."""
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(entry.value) if isinstance(s, str)]
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                scopes = []
            if scopes:
                return "_".join(s for s in scopes[:-1] if s) or scopes[-1]
    if node.name:
        parts = [p for p in node.name.split("/") if p]
        if len(parts) > 1 and node.name.startswith("/"):
            parts = parts[:-1]  # TorchScript: /layer1/conv1/Conv -> layer1_conv1
        label = "_".join(parts)
        label = label[5:] if label.startswith("node_") else label
        return label.lower() if label.split("_")[0] == node.op_type else label  # /Relu_1 -> relu_1
    return node.output[0] if node.output else node.op_type


class Names:
    """Layer names from nodes: sanitised to C identifiers, unique ignoring case (as the spec needs)."""

    def __init__(self):
        self.taken: set[str] = {name.lower() for name in RESERVED}

    def take(self, node=None, wanted: str | None = None) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", wanted if wanted is not None else _label(node))
        base = re.sub(r"_+", "_", base).strip("_") or (node.op_type.lower() if node is not None else "layer")
        if base[0].isdigit():
            base = f"n{base}"
        base = base[:MAX_NAME]
        name, count = base, 1
        while name.lower() in self.taken:
            count += 1
            suffix = f"_{count}"
            name = base[:MAX_NAME - len(suffix)] + suffix
        self.taken.add(name.lower())
        return name

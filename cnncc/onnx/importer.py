"""ONNX -> (Spec, weights): the graph's nodes as cnncc layers, its initializers as parameters.

The nodes are walked in their (topological) order, keeping only those the graph's output depends
on. Constant subgraphs are folded (fold.py); Identity and Dropout vanish; a Pad is absorbed by the
Conv or pool after it; a Relu, Sigmoid, Tanh or Softmax right after a Conv, ConvTranspose or Gemm
becomes its `activation:`; an Add of a constant after a bias-less Conv or MatMul becomes its bias. Anything
else cnncc cannot express raises UnsupportedModel naming the node and what is supported.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..check import check_net
from ..errors import SpecError
from ..spec import load_spec
from . import layers_in
from .fold import PROBES, Const, FoldError, constant_node, fold
from .graph import Act, Names, Padded, UnsupportedModel, attributes, describe
from .reader import FLOAT_TYPES, OnnxFileError, TensorReader, read_model
from .resize import ResizeError
from .windows import WindowError

MIN_OPSET, MAX_OPSET = 13, 21
DTYPES = {np.float32: "float32", np.float64: "float64"}


class Importer:
    def __init__(self, model, directory):
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UnsupportedModel(f"the model uses ONNX opset {self.opset}; cnncc imports opsets {MIN_OPSET} to "
                                   f"{MAX_OPSET} (re-export with e.g. torch.onnx.export(..., opset_version=17))")
        self.tensors = TensorReader(directory)
        self.values: dict = {}
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.origin: dict[str, str] = {}  # layer name -> the node it comes from (for errors)
        self.names = Names()
        self.consumers = Counter(name for node in self.graph.node for name in node.input if name)
        self.consumers.update(o.name for o in self.graph.output)
        self.producers = {name: node for node in self.graph.node for name in node.output}
        self.batches = PROBES  # the batch sizes a Shape reports (the input's, if it is fixed)
        self.dtype = np.float32  # the network's (graph_input sets it)
        self.node = None

    # ---- what nodes read -------------------------------------------------------------------
    def fail(self, message: str, supported: str | None = None):
        where = describe(self.node) if self.node is not None else "the graph"
        raise UnsupportedModel(f"{where}: {message}" + (f"; cnncc supports {supported}" if supported else ""))

    def value(self, index: int):
        names = self.node.input
        if index >= len(names) or not names[index]:
            return None
        if names[index] not in self.values:
            self.fail(f"input {names[index]!r} is not produced by any node, initializer or graph input")
        return self.values[names[index]]

    def act(self, index: int = 0, padded: bool = False):
        value = self.value(index)
        if isinstance(value, Padded) and not padded:
            self.fail("a Pad output read by an op that cannot absorb it",
                      "Pad only directly before a Conv, MaxPool or AveragePool")
        if not isinstance(value, (Act, Padded)):
            self.fail(f"input {index} is {'missing' if value is None else 'a constant'} where cnncc needs the "
                      "network's data (an activation)")
        return value

    def const(self, index: int, what: str, required: bool = True) -> np.ndarray | None:
        value = self.value(index)
        if value is None and not required:
            return None
        if not isinstance(value, Const):
            self.fail(f"its {what} (input {index}) must be a constant (an initializer or folded subgraph)")
        fixed = value.fixed
        if fixed is None:
            self.fail(f"its {what} depends on the batch size", "shapes that are constant but for the batch")
        return fixed

    def weight(self, index: int, what: str, required: bool = True) -> np.ndarray | None:
        array = self.const(index, what, required)
        if array is not None and array.dtype.kind != "f":
            self.fail(f"its {what} has element type {array.dtype}; cnncc's parameters are floats")
        return array

    def single_consumer(self, tensor: str) -> bool:
        return self.consumers[tensor] == 1

    def constant_sum(self, tensor: str) -> tuple[np.ndarray, float] | None:
        """(a, c) where `tensor`, read only by the current node, is Add(a, c) of a constant `a` and a
        one-element constant `c`, else None."""
        node = self.producers.get(tensor)
        if node is None or node.op_type != "Add" or not self.single_consumer(tensor) or len(node.input) != 2:
            return None
        values = [self.values.get(name) for name in node.input]
        if not all(isinstance(v, Const) and v.fixed is not None for v in values):
            return None
        a, c = (v.fixed for v in values)
        if c.size != 1 and a.size == 1:
            a, c = c, a
        return (a, float(c.reshape(-1)[0])) if c.size == 1 and a.size > 1 else None

    # ---- what nodes make -------------------------------------------------------------------
    def add_layer(self, kind: str, fields: dict, inputs: list[Act], params: dict, shape, flat=False) -> Act:
        name = self.names.take(self.node)
        self.layers.append({"name": name, "type": kind, **fields, "inputs": [a.layer for a in inputs]})
        for key, array in params.items():
            self.weights[f"{name}.{key}"] = array
        self.origin[name] = describe(self.node)
        return Act(name, tuple(shape), flat)

    def last_layer(self, act: Act) -> dict | None:
        """The layer that made `act`, if it is the latest one (so it may still absorb what follows)."""
        return self.layers[-1] if self.layers and self.layers[-1]["name"] == act.layer else None

    def output(self, value, index: int = 0) -> None:
        self.values[self.node.output[index]] = value

    def unused_outputs(self, first: int, what: str) -> None:
        for name in self.node.output[first:]:
            if name and self.consumers[name]:
                self.fail(f"its output {name!r} ({what}) is used", f"{self.node.op_type}'s first output only")

    # ---- the walk --------------------------------------------------------------------------
    def run(self) -> tuple[dict, dict[str, np.ndarray]]:
        graph = self.graph
        for tensor in graph.initializer:
            self.values[tensor.name] = Const.of(self.tensors.array(tensor))
        data_inputs = [i for i in graph.input if i.name not in self.values]
        if len(data_inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModel(f"the graph has {len(data_inputs)} data inputs and {len(graph.output)} outputs; "
                                   "cnncc imports networks with one input and one output")
        input_spec, dtype = self.graph_input(data_inputs[0])
        needed = self.needed()
        for node in graph.node:
            if not any(name in needed for name in node.output):
                continue
            self.node = node
            try:
                self.translate(node)
            except (WindowError, ResizeError) as exc:
                self.fail(str(exc))
            except FoldError as exc:
                self.fail(f"cannot be folded to a constant: {exc}")
        self.node = None
        result = self.values.get(graph.output[0].name)
        if not isinstance(result, Act) or result.layer == "input" or not self.layers:
            raise UnsupportedModel(f"the graph's output {graph.output[0].name!r} is not computed by any layer "
                                   "cnncc can express")
        if self.layers[-1]["name"] != result.layer:
            raise UnsupportedModel(f"the graph's output is layer '{result.layer}', not the last one computed")
        name = self.names.take(wanted=graph.name or "imported")
        spec = {"name": name, "input": input_spec, "dtype": dtype, "layers": self.layers}
        weights = {key: np.ascontiguousarray(array, dtype=dtype) for key, array in self.weights.items()}
        return spec, weights

    def graph_input(self, value_info) -> tuple[dict, str]:
        tensor = value_info.type.tensor_type
        dtype = FLOAT_TYPES.get(tensor.elem_type)
        if not value_info.type.HasField("tensor_type") or dtype is None:
            raise UnsupportedModel(f"the graph input {value_info.name!r} is not a float32 or float64 tensor; "
                                   "cnncc networks take float32 or float64 inputs")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if len(dims) not in (3, 4) or any(d is None or d < 1 for d in dims[1:]):
            shown = ["?" if d is None else d for d in dims]
            raise UnsupportedModel(f"the graph input {value_info.name!r} has shape {shown}; cnncc needs "
                                   "[N, C, H, W] or [N, C, L] with every size but the batch fixed")
        if dims[0] is not None and dims[0] > 0:
            self.batches = (dims[0],) * len(PROBES)
        self.values[value_info.name] = Act("input", tuple(dims[1:]))
        self.dtype = dtype
        keys = ("channels", "height", "width") if len(dims) == 4 else ("channels", "length")
        return dict(zip(keys, dims[1:])), DTYPES[dtype]

    def needed(self) -> set[str]:
        """The tensors the graph's output depends on (nodes making nothing else are skipped)."""
        producers = self.producers
        needed, stack = set(), [self.graph.output[0].name]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            node = producers.get(name)
            if node is not None:
                stack.extend(i for i in node.input if i)
        return needed

    def translate(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            self.fail(f"an operator of domain {node.domain!r}", "standard ONNX operators only")
        attrs = attributes(node, self.tensors)
        if node.op_type == "Constant":
            self.output(constant_node(attrs))
            return
        inputs = [self.value(i) for i in range(len(node.input))]
        if not any(isinstance(v, (Act, Padded)) for v in inputs):
            self.output(fold(node.op_type, inputs, attrs))
        elif node.op_type in layers_in.HANDLERS:
            layers_in.HANDLERS[node.op_type](self, attrs)
        else:
            self.fail("this operator on the network's data is not supported", layers_in.SUPPORTED)

    def shape_of(self, act: Act) -> Const:
        """A Shape of an activation: its sizes, with each probe batch size in front."""
        return Const(tuple(np.array([batch, *act.shape], np.int64) for batch in self.batches))


def translate(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(spec dict, weights) of an ONNX file; the spec is not yet validated."""
    path = Path(path)
    model = read_model(path)
    return Importer(model, path.parent).run()


def validate(source, weights, path):
    """The Spec of an imported network (a spec dict or its YAML text), checked by cnncc's checker,
    with every parameter the weights must provide there in the right shape."""
    try:
        spec = load_spec(source)
        net = check_net(spec)
    except SpecError as exc:
        raise UnsupportedModel(f"{path}: the imported network is not a valid cnncc spec:\n{exc.format()}") from None
    for checked in net.layers:
        for decl in checked.params:
            key = f"{checked.name}.{decl.name}"
            if key not in weights or weights[key].shape != decl.shape:
                found = weights[key].shape if key in weights else "nothing"
                raise UnsupportedModel(f"{path}: layer '{checked.name}' needs {key} of shape {decl.shape}, the "
                                       f"graph gives {found}")
    return spec


def load(path):
    """(Spec, weights keyed like Model.params) of an ONNX file, validated by cnncc's own checker."""
    spec_dict, weights = translate(path)
    return validate(spec_dict, weights, path), weights


__all__ = ["OnnxFileError", "UnsupportedModel", "load", "translate", "validate"]

"""A checked cnncc spec as the equivalent PyTorch module, for side-by-side benchmarks.

`build(report)` walks `Report.net` (every layer with its resolved fields and shapes) and
returns a `SpecModule`: the same layers in the same order, with the same parameter shapes
(cnncc stores weights in PyTorch's layout), so weights copy across one to one and the two
forwards can be compared before anything is timed. `optimizer(...)` and `loss(...)` build
the spec's optimizer and loss. Covers the layer kinds cnncc has: conv2d/conv1d (stride,
padding including asymmetric `same`, dilation, groups, bias), max/avg pooling (2-D, 1-D,
global), flatten, dense, the activations, batchnorm, dropout, add and concat.

Torch is imported here and only here; the harness works without it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnncc.layers.formulas import resolve_padding


class SpecModule(nn.Module):
    """Runs the spec's layers in order; each takes the outputs named by its `inputs`."""

    def __init__(self, names, inputs, layers, tensors):
        super().__init__()
        self.names = list(names)
        self.inputs = [list(i) for i in inputs]
        self.layers = nn.ModuleList(layers)
        self._tensors = tensors  # cnncc parameter key -> (layer index, attribute path)
        previous = ["input"] + self.names[:-1]
        # A chain runs like nn.Sequential, PyTorch's usual idiom, with no bookkeeping.
        self.sequential = all(i == [p] for i, p in zip(self.inputs, previous))

    def forward(self, x):
        if self.sequential:
            for layer in self.layers:
                x = layer(x)
            return x
        values = {"input": x}
        for name, inputs, layer in zip(self.names, self.inputs, self.layers):
            values[name] = layer(*[values[i] for i in inputs])
        return values[self.names[-1]]

    def cnncc_tensors(self) -> dict[str, torch.Tensor]:
        """cnncc parameter key (`conv1.weight`, `bn.running_var`) -> the torch tensor."""
        out = {}
        for key, (index, path) in self._tensors.items():
            obj = self.layers[index]
            for part in path.split("."):
                obj = getattr(obj, part)
            out[key] = obj
        return out

    def load_cnncc(self, params: dict[str, np.ndarray]) -> None:
        """Copy a cnncc Model's `params` (trainable and running statistics) into this module."""
        tensors = self.cnncc_tensors()
        if set(tensors) != set(params):
            raise ValueError(f"parameter keys differ: torch {sorted(tensors)} vs cnncc {sorted(params)}")
        with torch.no_grad():
            for key, value in params.items():
                if tuple(tensors[key].shape) != tuple(value.shape):
                    raise ValueError(f"{key}: torch shape {tuple(tensors[key].shape)} vs cnncc {value.shape}")
                tensors[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))


class _Sum(nn.Module):
    def forward(self, *xs):
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total


class _Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class _Flatten(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())))


def _activation(kind: str, alpha: float = 0.01) -> nn.Module:
    """An activation; a fused `activation: leaky_relu` field has the default slope (as in cnncc's IR)."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(alpha)
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "softmax":
        return nn.Softmax(dim=1)
    if kind == "linear":
        return nn.Identity()
    raise ValueError(f"no torch equivalent for activation '{kind}'")


def _padding(layer_kind, shape, one_d: bool):
    """((top, bottom), (left, right)) padding of a conv/pool layer on an input shape."""
    kernel, stride = layer_kind.kernel, layer_kind.stride
    dilation = getattr(layer_kind, "dilation", (1, 1))
    if one_d:
        h, w = 1, shape[1]
        pad_h = (0, 0)
    else:
        h, w = shape[1], shape[2]
        pad_h = resolve_padding(layer_kind.padding, h, kernel[0], stride[0], dilation[0], 0)
    pad_w = resolve_padding(layer_kind.padding, w, kernel[1], stride[1], dilation[1], 1)
    return pad_h, pad_w


def _padded(module_cls, pad_h, pad_w, one_d: bool, fill: float, **kwargs) -> nn.Module:
    """The module with symmetric padding passed in, or preceded by an explicit pad."""
    if pad_h[0] == pad_h[1] and pad_w[0] == pad_w[1]:
        return module_cls(padding=pad_w[0] if one_d else (pad_h[0], pad_w[0]), **kwargs)
    if one_d:
        pad = nn.ConstantPad1d((pad_w[0], pad_w[1]), fill)
    else:
        pad = nn.ConstantPad2d((pad_w[0], pad_w[1], pad_h[0], pad_h[1]), fill)
    return nn.Sequential(pad, module_cls(padding=0, **kwargs))


def _conv(checked, one_d: bool):
    k = checked.layer
    shape = checked.input_shapes[0]
    pad_h, pad_w = _padding(k, shape, one_d)
    cls = nn.Conv1d if one_d else nn.Conv2d
    kwargs = dict(in_channels=shape[0], out_channels=k.filters, groups=k.groups, bias=k.bias,
                  kernel_size=k.kernel[1] if one_d else k.kernel, stride=k.stride[1] if one_d else k.stride,
                  dilation=k.dilation[1] if one_d else k.dilation)
    conv = _padded(cls, pad_h, pad_w, one_d, 0.0, **kwargs)
    prefix = "" if isinstance(conv, cls) else "1."
    return conv, {"weight": prefix + "weight", "bias": prefix + "bias"}


def _pool(checked, one_d: bool, kind: str):
    k = checked.layer
    pad_h, pad_w = _padding(k, checked.input_shapes[0], one_d)
    if kind == "max":
        cls = nn.MaxPool1d if one_d else nn.MaxPool2d
        fill = float("-inf")  # padding never wins the max
    else:
        cls = nn.AvgPool1d if one_d else nn.AvgPool2d
        fill = 0.0  # padding counts as zeros, divisor kh*kw (count_include_pad, torch's default)
    kwargs = dict(kernel_size=k.kernel[1] if one_d else k.kernel, stride=k.stride[1] if one_d else k.stride)
    return _padded(cls, pad_h, pad_w, one_d, fill, **kwargs)


def _layer(checked):
    """(module, {cnncc param name: attribute path in the module}) for one checked layer."""
    kind, k = checked.spec.kind, checked.layer
    shape = checked.input_shapes[0]
    if kind in ("conv2d", "conv1d"):
        return _conv(checked, one_d=kind == "conv1d")
    if kind == "dense":
        return nn.Linear(shape[0], k.units, bias=k.bias), {"weight": "weight", "bias": "bias"}
    if kind in ("maxpool2d", "maxpool1d"):
        return _pool(checked, kind.endswith("1d"), "max"), {}
    if kind in ("avgpool2d", "avgpool1d"):
        return _pool(checked, kind.endswith("1d"), "avg"), {}
    if kind == "global_avgpool":
        return _GlobalAvgPool(), {}
    if kind == "flatten":
        return _Flatten(), {}
    if kind == "batchnorm":
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return cls(shape[0], eps=k.eps, momentum=k.momentum), {
            "gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}
    if kind == "dropout":
        return nn.Dropout(k.rate), {}
    if kind == "add":
        return _Sum(), {}
    if kind == "concat":
        return _Concat(), {}
    if kind in ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear"):
        return _activation(kind, getattr(k, "alpha", 0.01)), {}
    raise ValueError(f"no torch equivalent for layer kind '{kind}'")


def build(report) -> SpecModule:
    """The torch module of a checked spec (`cnncc.check(spec)`), torch's default init."""
    names, inputs, layers, tensors = [], [], [], {}
    for checked in report.net.layers:
        module, paths = _layer(checked)
        activation = checked.layer.activation_kind
        if activation:
            module = nn.Sequential(module, _activation(activation))
            paths = {name: "0." + path for name, path in paths.items()}
        index = len(layers)
        for param in checked.params:
            tensors[f"{checked.name}.{param.name}"] = (index, paths[param.name])
        names.append(checked.name)
        inputs.append(checked.spec.inputs)
        layers.append(module)
    return SpecModule(names, inputs, layers, tensors)


def optimizer(module: nn.Module, spec) -> torch.optim.Optimizer:
    """The spec's optimizer with its settings (PyTorch's update rules are cnncc's)."""
    opt, s = spec.optimizer, spec.optimizer.settings
    params = [p for p in module.parameters() if p.requires_grad]
    if opt.type == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=(s.get("beta1", 0.9), s.get("beta2", 0.999)),
                                eps=s.get("eps", 1e-8), weight_decay=s.get("weight_decay", 0.0))
    if opt.type == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=s.get("momentum", 0.0),
                               nesterov=bool(s.get("nesterov", False)), weight_decay=s.get("weight_decay", 0.0))
    raise ValueError(f"no torch equivalent for optimizer '{opt.type}'")


def loss(spec) -> nn.Module:
    """The spec's loss: softmax cross-entropy on logits, MSE, or BCE on the sigmoid output."""
    kinds = {"softmax_cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss, "binary_cross_entropy": nn.BCELoss}
    if spec.loss not in kinds:
        raise ValueError(f"no torch equivalent for loss '{spec.loss}'")
    return kinds[spec.loss]()


def targets(y: np.ndarray, spec) -> torch.Tensor:
    """cnncc targets (int32 labels or float arrays) as what the torch loss takes."""
    if spec.loss == "softmax_cross_entropy":
        return torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(y))

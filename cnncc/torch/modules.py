"""A cnncc network as a torch.nn.Module computing the same function.

Each spec layer is a submodule under its own name (`conv1`, `bn`), so the module's state_dict keys
are `<layer>.<torch name>`: cnncc's `conv1.weight` is torch's `conv1.weight`, its batchnorm `gamma`
and `beta` are torch's `weight` and `bias` (weights.py holds that mapping). A fused
`activation:` is applied after its layer without a module of its own. Padding that torch's layers
cannot take (cnncc's asymmetric 'same', the four-value form) is applied with F.pad first.
"""
from __future__ import annotations

from ..extras import require

torch = require("torch", "torch", "cnncc.torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from ..check import check_net  # noqa: E402
from ..layers.formulas import pads_per_side  # noqa: E402
from ..spec import load_spec  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FUSED_LEAKY_SLOPE = 0.01  # a fused `activation: leaky_relu` has the default slope (as in cnncc's IR)


def attribute_name(layer: str) -> str:
    """The submodule's name for a spec layer: the layer's, unless nn.Module already has that attribute."""
    return f"{layer}_" if hasattr(SpecModule, layer) or layer in ("order", "fused") else layer


class SpecModule(nn.Module):
    """Runs the spec's layers in order; each reads the outputs its `inputs` name."""

    def __init__(self, spec, layers: dict, inputs: dict, fused: dict):
        super().__init__()
        self.spec_name = spec.name
        self.order = [(name, attribute_name(name), tuple(inputs[name])) for name in layers]
        for name, module in layers.items():
            self.add_module(attribute_name(name), module)
        self.fused = fused  # layer -> its activation function (no parameters)

    def forward(self, x):
        values = {"input": x}
        for name, attribute, inputs in self.order:
            y = getattr(self, attribute)(*[values[i] for i in inputs])
            values[name] = self.fused[name](y) if name in self.fused else y
        return values[self.order[-1][0]]


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


class _GlobalMaxPool(nn.Module):
    """The maximum of each channel, flat; max over one axis sends a tie's gradient to a single
    position (the first on CPU), as cnncc does (amax would share it)."""

    def forward(self, x):
        return torch.flatten(x, 2).max(dim=2).values


class _Padded(nn.Module):
    """F.pad, then the layer (which keeps its parameters' names: this wraps none)."""

    def __init__(self, pads, fill, function):
        super().__init__()
        self.pads, self.fill, self.function = pads, fill, function

    def forward(self, x):
        return self.function(F.pad(x, self.pads, value=self.fill))


class _PaddedConv(nn.Module):
    """A conv with cnncc's per-side padding; its parameters are `weight` and `bias`, as torch's conv."""

    def __init__(self, conv, pads):
        super().__init__()
        self.weight, self.bias, self.pads = conv.weight, conv.bias, pads
        self.options = {"stride": conv.stride, "dilation": conv.dilation, "groups": conv.groups}
        self.function = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d

    def forward(self, x):
        return self.function(F.pad(x, self.pads), self.weight, self.bias, **self.options)


def _activation(kind: str, alpha: float = FUSED_LEAKY_SLOPE) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "linear": nn.Identity}[kind]() \
        if kind not in ("leaky_relu", "softmax") else (nn.LeakyReLU(alpha) if kind == "leaky_relu" else nn.Softmax(1))


def _sides(checked):
    """((top, bottom), (left, right)), and whether torch's symmetric `padding` can express them."""
    k = checked.layer
    (top, bottom), (left, right) = pads_per_side(k.padding, checked.input_shapes[0], k.kernel, k.stride,
                                                 getattr(k, "dilation", (1, 1)))
    return (top, bottom), (left, right), top == bottom and left == right


def _conv(checked):
    k, shape = checked.layer, checked.input_shapes[0]
    one_d = len(shape) == 2
    (top, bottom), (left, right), symmetric = _sides(checked)
    cls = nn.Conv1d if one_d else nn.Conv2d
    pick = (lambda pair: pair[1]) if one_d else (lambda pair: tuple(pair))
    conv = cls(shape[0], k.filters, pick(k.kernel), stride=pick(k.stride), dilation=pick(k.dilation),
               groups=k.groups, bias=k.bias, padding=(left if one_d else (top, left)) if symmetric else 0)
    if symmetric:
        return conv
    return _PaddedConv(conv, (left, right) if one_d else (left, right, top, bottom))


def _pool(checked, kind):
    k, shape = checked.layer, checked.input_shapes[0]
    one_d = len(shape) == 2
    (top, bottom), (left, right), symmetric = _sides(checked)
    kernel, stride = (k.kernel[1], k.stride[1]) if one_d else (tuple(k.kernel), tuple(k.stride))
    cls = {("max", True): nn.MaxPool1d, ("max", False): nn.MaxPool2d,
           ("avg", True): nn.AvgPool1d, ("avg", False): nn.AvgPool2d}[kind, one_d]
    if symmetric:
        return cls(kernel, stride, padding=left if one_d else (top, left))
    # padding never wins the max; average padding counts as zeros (divisor kh*kw, as count_include_pad)
    return _Padded((left, right) if one_d else (left, right, top, bottom),
                   float("-inf") if kind == "max" else 0.0, cls(kernel, stride))


def _conv_transpose(checked):
    # cnncc's weight layout (c_in, filters/groups, kh, kw) is torch's, so no mapping is needed
    k = checked.layer
    return nn.ConvTranspose2d(checked.input_shapes[0][0], k.filters, tuple(k.kernel), stride=tuple(k.stride),
                              padding=tuple(k.padding), output_padding=tuple(k.output_padding), groups=k.groups,
                              bias=k.bias, dilation=tuple(k.dilation))


def _upsample(checked):
    k = checked.layer
    scale = tuple(float(s) for s in k.scale_factor)
    if k.mode == "bilinear":
        return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=scale, mode="nearest")


def _batchnorm(checked):
    shape, k = checked.input_shapes[0], checked.layer
    cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    return cls(shape[0], eps=k.eps, momentum=k.momentum)


BUILDERS = {
    "conv2d": _conv, "conv1d": _conv, "conv_transpose2d": _conv_transpose, "upsample2d": _upsample,
    "dense": lambda c: nn.Linear(c.input_shapes[0][0], c.layer.units, bias=c.layer.bias),
    "maxpool2d": lambda c: _pool(c, "max"), "maxpool1d": lambda c: _pool(c, "max"),
    "avgpool2d": lambda c: _pool(c, "avg"), "avgpool1d": lambda c: _pool(c, "avg"),
    "global_avgpool": lambda c: _GlobalAvgPool(), "global_maxpool": lambda c: _GlobalMaxPool(),
    "flatten": lambda c: _Flatten(), "batchnorm": _batchnorm,
    "dropout": lambda c: nn.Dropout(c.layer.rate), "add": lambda c: _Sum(), "concat": lambda c: _Concat(),
    "leaky_relu": lambda c: _activation("leaky_relu", c.layer.alpha),
    **{kind: (lambda kind: lambda c: _activation(kind))(kind) for kind in ("relu", "sigmoid", "tanh", "softmax",
                                                                            "linear")},
}


def build(spec) -> SpecModule:
    """The module of a spec (a path, dict, Spec or cnncc.Report), with torch's default initialisation,
    in the spec's dtype."""
    spec = getattr(spec, "spec", None) or load_spec(spec)
    layers, inputs, fused = {}, {}, {}
    for checked in check_net(spec).layers:
        if checked.spec.kind not in BUILDERS:
            raise ValueError(f"layer '{checked.name}': no torch equivalent for layer kind '{checked.spec.kind}'")
        layers[checked.name] = BUILDERS[checked.spec.kind](checked)
        inputs[checked.name] = checked.spec.inputs
        if checked.layer.activation_kind:
            fused[checked.name] = _activation(checked.layer.activation_kind)
    return SpecModule(spec, layers, inputs, fused).to(DTYPES[spec.dtype])


def loss(spec) -> nn.Module:
    """The spec's loss as torch computes it: cross-entropy of the logits, MSE, or BCE of probabilities."""
    spec = getattr(spec, "spec", None) or load_spec(spec)
    kinds = {"softmax_cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss, "binary_cross_entropy": nn.BCELoss}
    if spec.loss not in kinds:
        raise ValueError(f"spec '{spec.name}' has no loss" if spec.loss is None else f"no torch loss for {spec.loss}")
    return kinds[spec.loss]()

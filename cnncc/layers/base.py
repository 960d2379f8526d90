"""The contract every layer kind fulfils, and the registry that collects them.

A layer kind is one small class: its spec fields (declared, validated in one place), its
output shape, parameters, MACs, receptive-field window, the `--explain` lines, and (for the
kinds whose kernels need no choice) the named constants its C template needs; kernel plans
belong to the backends (cnncc/backends). Subclasses with a `kind` register themselves; no
other code anywhere dispatches on the kind's name.

Shapes are per-sample tuples: (C, H, W) images, (C, L) signals, (N,) flat vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from ..fields import Field

REGISTRY: dict[str, type["LayerKind"]] = {}

Shape = tuple[int, ...]


class ShapeError(Exception):
    """A layer cannot accept its inputs; `field` names the spec field to point at."""

    def __init__(self, message: str, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint


@dataclass(frozen=True)
class ParamDecl:
    name: str  # local name: weight, bias, gamma, ...
    shape: tuple[int, ...]  # PyTorch's layout, e.g. (filters, c_in/groups, kh, kw)
    trainable: bool
    init: str  # he | xavier | zeros | ones
    fan_in: int = 0
    fan_out: int = 0

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Window:
    """How a layer widens the receptive field along (h, w): effective kernel and stride. An
    upsampling layer's stride is a Fraction 1/s (its outputs are 1/s input pixels apart), its
    kernel the input pixels one output reads."""

    kernel: tuple[int, int]
    stride: tuple[int | Fraction, int | Fraction]


GLOBAL = "global"  # a layer whose every output sees its whole input (dense, global pooling)


def is_flat(shape: Shape) -> bool:
    return len(shape) == 1


def as_chw(shape: Shape) -> tuple[int, int, int]:
    """The (C, H, W) view kernels use: a signal is 1 x L, a flat vector is N x 1 x 1."""
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    return (shape[0], 1, 1)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def format_shape(shape: Shape) -> str:
    """The notes' H x W x C (L x C for signals)."""
    if len(shape) == 3:
        return f"{shape[1]}x{shape[2]}x{shape[0]}"
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]}"
    return f"{shape[0]}"


class LayerKind:
    kind: ClassVar[str]
    doc: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    # templates/layers/<template>.c.j2 holds the kernels; None: the output aliases the input.
    template: ClassVar[str | None]
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            REGISTRY[cls.kind] = cls
        if "template" not in cls.__dict__ and "kind" in cls.__dict__ and not hasattr(cls, "template"):
            cls.template = cls.kind

    def __init__(self, **values: Any):
        for key, value in values.items():
            setattr(self, key, value)

    def values(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.fields}

    # --- shape checking -------------------------------------------------------------
    def output_shape(self, inputs: list[Shape]) -> Shape:
        raise NotImplementedError

    def param_decls(self, inputs: list[Shape]) -> list[ParamDecl]:
        return []

    def macs(self, inputs: list[Shape], output: Shape) -> int:
        return 0

    def window(self, inputs: list[Shape]) -> Window | str | None:
        """Receptive-field step: a Window, GLOBAL, or None for an element-wise layer."""
        return None

    def explain(self, inputs: list[Shape], output: Shape) -> list[str]:
        return []

    @property
    def activation_kind(self) -> str | None:
        """A fused `activation:` field, lowered to its own op after this one."""
        value = getattr(self, "activation", None)
        return None if value is None or REGISTRY[value].template is None else value  # linear: no op

    is_activation: ClassVar[bool] = False  # an element-wise activation (or softmax) as a layer of its own
    # Its input's gradient is nonzero only at each window's maximum (a max pool), which it passes
    # dout to: a conv before it may run its backward at those positions alone (ir.PooledBackward).
    gradient_at_window_max: ClassVar[bool] = False
    # Element-wise, its gradient is dout exactly where its output is positive and zero elsewhere (relu).
    gradient_where_positive: ClassVar[bool] = False
    # Its outputs are a probability distribution over the channels (softmax).
    outputs_probabilities: ClassVar[bool] = False
    # The logistic function 1 / (1 + exp(-x)), element-wise (sigmoid): a loss may read its input.
    is_logistic: ClassVar[bool] = False
    # How a conv's or dense layer's weights are drawn when this is their `activation:` (He for the
    # rectifiers, Xavier otherwise).
    weight_init_before: ClassVar[str] = "xavier"
    normalises_its_input: ClassVar[bool] = False  # subtracts the batch mean (a bias before it does nothing)
    # The element-wise sum of its inputs, its gradient dout to each (add): the op before it may
    # add its other input in its own kernels (lowering._residual_epilogues).
    sums_its_inputs: ClassVar[bool] = False

    @property
    def final_activation(self) -> str | None:
        """The activation this layer's output has been through last: its `activation:` field, or the
        layer's own kind for an activation layer (what a loss checks the network ends in)."""
        return self.activation_kind or (self.kind if self.is_activation else None)

    # --- what its kernels read (a kind whose kernels need a choice has a planner instead:
    # cnncc/backends/*/; the generic plan takes these) -----------------------------------
    def kernel_consts(self, inputs: list[Shape], output: Shape) -> dict[str, Any]:
        """Named constants of the template (integers for its enum; numbers, booleans, formulas)."""
        return {}

    def workspace(self, inputs: list[Shape], output: Shape) -> int:
        """Elements of memory (independent of the batch) its forward keeps for its backward."""
        return 0

    # --- inference builds (cnncc emit --inference-only) -----------------------------------
    # Kernel argument roles its forward reads only when training (what it keeps for backward):
    # an inference build binds them not at all (backends/arguments.py).
    training_only_roles: ClassVar[tuple[str, ...]] = ()
    # Parameters an inference build with compiled-in weights replaces by constants derived from
    # them at emit time (`fold`), so the device never recomputes them (batchnorm's scale, shift).
    folded_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def fold(cls, settings: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """The constants (role -> NumPy array in the parameters' dtype) that replace
        `folded_params`, from the plan's settings and the parameters' values (role -> array)."""
        return {}


def explain_params(decls: list[ParamDecl]) -> str:
    """'5*5*3*8 + 8 = 608' from the declared parameter shapes."""
    parts = ["*".join(str(d) for d in decl.shape) for decl in decls if decl.trainable]
    total = sum(decl.size for decl in decls if decl.trainable)
    return f"params: {' + '.join(parts) if parts else '0'} = {total}"

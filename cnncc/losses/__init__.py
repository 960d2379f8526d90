"""Every loss, registered by importing its module (templates/losses/<kind>.c.j2 beside each)."""
from . import softmax_cross_entropy, mse, binary_cross_entropy  # noqa: F401  (registration, in this order)
from .base import LOSSES, LossKind, loss_named_elsewhere


def loss_kind(kind: str) -> LossKind:
    """The loss object of a registered kind."""
    return LOSSES[kind]()


__all__ = ["LOSSES", "LossKind", "loss_kind", "loss_named_elsewhere"]

"""Every optimizer, registered by importing its module (templates/optimizers/<kind>.c.j2 beside each)."""
from . import sgd, adam  # noqa: F401  (registration, in this order)
from .base import OPTIMIZERS, OptimizerKind


def optimizer_kind(kind: str) -> OptimizerKind:
    """The optimizer object of a registered kind."""
    return OPTIMIZERS[kind]()


__all__ = ["OPTIMIZERS", "OptimizerKind", "optimizer_kind"]

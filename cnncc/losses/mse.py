"""mse: the mean squared error against float targets shaped like the output."""
from __future__ import annotations

from .base import LossKind


class MeanSquaredError(LossKind):
    kind = "mse"
    doc = "mean over every output element of (output - target)^2"
    aliases = ("mean_squared_error", "mseloss", "l2")

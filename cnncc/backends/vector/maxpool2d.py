"""maxpool2d (and maxpool1d): the generic plan, and in training the argmax a conv's pooled
backward reads (ir.PooledBackward), kept by the forward in the memory of its input's gradient."""
from __future__ import annotations

from ..plan import KernelPlan, PlanRequest
from .generic import GenericPlanner

FORWARD = ("out", "in", "argmax if keeps_argmax", "batch")
BACKWARD = ("din", "dout", "in", "batch")


class MaxPoolPlanner(GenericPlanner):
    def __init__(self):
        super().__init__("maxpool2d")

    def plan(self, request: PlanRequest, extra_settings=None, roles=None) -> KernelPlan:
        return super().plan(request, {"keeps_argmax": request.keeps_argmax}, (FORWARD, BACKWARD))

"""dense: the generic plan's constants and arguments, and the samples per product. With a relu
epilogue the forward applies the relu in its pass that adds the bias, and the backward first
masks each block's output gradient (dout where the op's output is positive) into its workspace,
so the relu's own gradient, which Model.activation returns, stays as it is."""
from __future__ import annotations

from ..plan import KernelPlan, PlanRequest, resolve_roles
from .generic import GenericPlanner

# Samples per product (keeps row counts int). A relu epilogue's workspace holds one block's masked
# output gradient, so its blocks are smaller; the sums are the same bits at any block size (the
# products accumulate in C itself, over the samples in order).
ROWS_PER_BLOCK = 256
ROWS_PER_MASKED_BLOCK = 64

FORWARD = ("out", "in", "weight", "bias", "batch")
BACKWARD = ("din", "dweight", "dbias", "dout", "out if relu", "in if dweight", "weight if din", "scratch if relu",
            "batch")


class DensePlanner(GenericPlanner):
    def __init__(self):
        super().__init__("dense")

    def plans_relu_epilogue(self, layer) -> bool:
        return True

    def plan(self, request: PlanRequest, extra_settings=None, roles=None) -> KernelPlan:
        consts = request.layer.kernel_consts(list(request.inputs), request.output)
        relu = request.relu_epilogue
        dims = {"IN": consts["IN"], "OUT": consts["OUT"],
                "BATCH_BLOCK": ROWS_PER_MASKED_BLOCK if relu else ROWS_PER_BLOCK}
        settings = {"has_bias": consts["has_bias"], "relu": relu}
        return KernelPlan(self.templates[0], self.templates[0], dims, dims,
                          resolve_roles(FORWARD, request, settings), resolve_roles(BACKWARD, request, settings),
                          settings, dims["BATCH_BLOCK"] * dims["OUT"] if relu else 0,
                          keeps_workspace=False, initialised_grads=request.first_gradient_writes)

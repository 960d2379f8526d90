"""batchnorm: the generic plan, and BN_GROUP, the channels each of its passes over the batch takes
(templates/layers/batchnorm.c.j2). A pass reads its group's planes of every sample in memory
order, so with every channel in one group it is one stream through the whole tensor, the order
the prefetchers follow best. ResNet-8's seven batchnorms at batch 64 (1 thread, AMD EPYC Zen 4)
took 4.1 ms forward and backward together with all channels per pass, 5.0 ms with 16 and 5.9 ms
with 8. A threaded build has one group per sample slot (its threads take the groups). The sums
of each channel run in the same order whatever its group, so the results do not depend on it."""
from __future__ import annotations

from ..plan import KernelPlan, PlanRequest
from .generic import GenericPlanner

# channels per group at most: a pass keeps its partial sums on the stack (2 x BN_GROUP x
# MOMENT_LANES doubles, 16 KB at 64), and a device's stack is small (64 KB on the MPS2 board)
BN_MAX_GROUP = 64


class BatchNormPlanner(GenericPlanner):
    def __init__(self):
        super().__init__("batchnorm")

    def plan(self, request: PlanRequest, extra_settings=None, roles=None) -> KernelPlan:
        channels = request.layer.kernel_consts(list(request.inputs), request.output)["C"]
        group = min(BN_MAX_GROUP, -(-channels // request.sample_slots))
        return super().plan(request, extra_dims={"BN_GROUP": group})

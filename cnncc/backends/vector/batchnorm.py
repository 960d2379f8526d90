"""batchnorm: the generic plan, and BN_GROUP, the channels each of its passes over the batch takes
(templates/layers/batchnorm.c.j2). A pass reads its group's planes of every sample in memory
order, so with every channel in one group it is one stream through the whole tensor, the order
the prefetchers follow best. ResNet-8's seven batchnorms at batch 64 (1 thread, AMD EPYC Zen 4)
took 4.1 ms forward and backward together with all channels per pass, 5.0 ms with 16 and 5.9 ms
with 8. A threaded build has one group per sample slot (its threads take the groups). The sums
of each channel run in the same order whatever its group, so the results do not depend on it.

A batchnorm whose output only an add reads takes the add (and the add's relu) as its epilogue
(lowering._residual_epilogues): the normalisation pass writes relu(y + residual) where the add's
output goes, and the backward writes the residual's gradient in its last pass. ResNet-8's block
ends then cost one pass less over the tensor forward and two fewer backward, and one tensor
less is stored."""
from __future__ import annotations

from ..plan import KernelPlan, PlanRequest
from .generic import GenericPlanner

# channels per group at most: a pass keeps its partial sums on the stack (2 x BN_GROUP x
# MOMENT_LANES doubles, 16 KB at 64), and a device's stack is small (64 KB on the MPS2 board)
BN_MAX_GROUP = 64


class BatchNormPlanner(GenericPlanner):
    def __init__(self):
        super().__init__("batchnorm")

    def plans_residual_epilogue(self, layer) -> bool:
        return True

    def plan(self, request: PlanRequest, extra_settings=None, roles=None) -> KernelPlan:
        channels = request.layer.kernel_consts(list(request.inputs), request.output)["C"]
        group = min(BN_MAX_GROUP, -(-channels // request.sample_slots))
        # a relu's mask in the backward: found again from the input (y = in * scale + shift), or
        # after a residual, whose sum only the output has, read from the output
        residual, relu = request.residual_epilogue, request.relu_epilogue
        settings = {"residual": residual, "relu_from_input": relu and not residual,
                    "relu_from_output": relu and residual}
        return super().plan(request, extra_settings=settings, extra_dims={"BN_GROUP": group})

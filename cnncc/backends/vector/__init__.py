"""The vector backend: GNU C vector extensions sized to the target's widest vectors (AVX-512,
AVX, or 16 bytes), register-blocked matrix products, OpenMP sample slots. The default for the
Python module: it is the fastest on the machines cnncc runs on. Its templates are the shared
ones under templates/; its planners are the modules of this package, one per template family
that needs a choice (the others take the generic plan)."""
from __future__ import annotations

from ..base import Backend
from ..plan import Planner
from .batchnorm import BatchNormPlanner
from .conv2d import ConvPlanner
from .dense import DensePlanner
from .generic import GenericPlanner
from .maxpool2d import MaxPoolPlanner


class VectorBackend(Backend):
    name = "vector"
    doc = "GNU C vector kernels (GCC or Clang), tuned to the build machine's vector width"
    # template family (LayerKind.template) -> its planner; the others plan generically
    planners = {"conv2d": ConvPlanner(), "dense": DensePlanner(), "maxpool2d": MaxPoolPlanner(),
                "batchnorm": BatchNormPlanner()}

    def planner_for(self, template: str) -> Planner:
        return self.planners.get(template) or GenericPlanner(template)

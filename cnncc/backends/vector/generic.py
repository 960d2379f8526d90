"""The plan of a layer kind whose kernels need no choice: one template (the kind's), its
constants from the layer (kernel_consts: the integers become the enum, the rest settings), its
workspace from the layer (what the backward needs kept), and the arguments listed here."""
from __future__ import annotations

from ..plan import KernelPlan, Planner, PlanRequest, resolve_roles

# template -> (the forward's argument roles, the backward's): see plan.resolve_roles
ARGUMENTS = {
    "activation": (("out", "in", "batch"),
                   ("din", "dout", "in if backward_reads_x", "out if backward_reads_y", "batch")),
    "add": (("out", "ins", "batch"), ("dins", "dout", "out if relu", "batch")),
    "avgpool2d": (("out", "in", "batch"), ("din", "dout", "batch")),
    "batchnorm": (("out", "in", "residual if residual", "gamma", "beta", "running_mean", "running_var", "scratch",
                   "batch", "training"),
                  ("din", "dresidual if residual", "dgamma", "dbeta", "dout", "in", "out if relu_from_output",
                   "gamma if din", "gamma if relu_from_input", "beta if relu_from_input", "scratch", "batch")),
    "concat": (("out", "ins", "batch"), ("dins", "dout", "batch")),
    "dropout": (("out", "in", "batch", "training", "seed"), ("din", "dout", "batch", "seed")),
    "global_avgpool": (("out", "in", "batch"), ("din", "dout", "batch")),
    "softmax": (("out", "in", "batch"), ("din", "dout", "out", "batch")),
    "conv_transpose2d": (("out", "in", "weight", "bias", "scratch", "batch"),
                         ("din", "dweight", "dbias", "dout", "in", "weight", "scratch", "batch")),
    "upsample2d": (("out", "in", "batch"), ("din", "dout", "batch")),
    "global_maxpool": (("out", "in", "batch"), ("din", "dout", "in", "batch")),
}


# templates that can end with a relu (PlanRequest.relu_epilogue): setting `relu`, and the backward
# masks dout where the relu's input is not positive: add reads its own output (the relu's) for it,
# batchnorm computes it again from its input and parameters
RELU_EPILOGUE = {"batchnorm", "add"}


# templates whose backward writes each gradient element once, or zeroes a plane before adding into
# it (avgpool2d), so it can write the gradients it is the first to write with `=`
# (PlanRequest.first_gradient_writes, KernelPlan.initialised_grads): nothing zeroes them first
INITIALISES_GRADS = {"activation", "add", "avgpool2d", "batchnorm", "concat", "dropout", "global_avgpool", "softmax"}


class GenericPlanner(Planner):
    def __init__(self, template: str):
        self.template = template
        self.templates = (f"layers/{template}",)

    def plans_relu_epilogue(self, layer) -> bool:
        return self.template in RELU_EPILOGUE

    def plan(self, request: PlanRequest, extra_settings: dict | None = None,
             roles: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
             extra_dims: dict[str, int] | None = None) -> KernelPlan:
        """extra_settings, extra_dims: a planner's own settings and constants beside the layer's."""
        consts = request.layer.kernel_consts(list(request.inputs), request.output)
        dims = {k: v for k, v in consts.items() if isinstance(v, int) and not isinstance(v, bool)}
        dims |= extra_dims or {}
        settings = {k: v for k, v in consts.items() if k not in dims} | (extra_settings or {})
        if self.template in RELU_EPILOGUE:
            settings["relu"] = request.relu_epilogue
        forward, backward = roles or ARGUMENTS[self.template]
        workspace = request.layer.workspace(list(request.inputs), request.output)
        if not workspace:
            forward, backward = (tuple(r for r in rs if r != "scratch") for rs in (forward, backward))
        forward_args = resolve_roles(forward, request, settings)
        # an inference forward that uses its scratch (conv_transpose2d's columns) needs it in the arena
        forward_scratch = workspace if "scratch" in forward_args and \
            "scratch" not in request.layer.training_only_roles else 0
        initialised = request.first_gradient_writes if self.template in INITIALISES_GRADS else ()
        return KernelPlan(self.templates[0], self.templates[0], dims, dims,
                          forward_args, resolve_roles(backward, request, settings),
                          settings, workspace, forward_scratch, initialised)

"""The backend seam: how one IR becomes C for one kind of target.

A backend is a folder: a package here (its class registered by `name`), the kernel planners it
uses (each beside its templates: plan.py), and optionally a template folder under templates/ that
overlays the shared templates (a template found there replaces the shared one of the same path).
Lowering asks the backend for each op's planner and stores the frozen plan in the op; templates
read the plan and decide nothing. Adding a backend touches nothing outside its folders.
"""
from __future__ import annotations

from typing import ClassVar

from ..layers import REGISTRY
from .plan import Planner

BACKENDS: dict[str, type["Backend"]] = {}


class Backend:
    name: ClassVar[str]
    doc: ClassVar[str] = ""
    # templates/<overlay>/ is searched before templates/ (None: the shared templates alone)
    template_overlay: ClassVar[str | None] = None
    # whether its kernels can use threads (CompileOptions refuses threads > 1 otherwise)
    threaded: ClassVar[bool] = True
    # the default CFLAGS of the Makefile `cnncc emit` writes (the cffi build's are options.py's)
    emit_cflags: ClassVar[str] = "-O3 -ffp-contract=fast -fno-math-errno"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            BACKENDS[cls.name] = cls

    def planner(self, kind: str) -> Planner:
        """The kernel planner of a layer kind: the one registered for its template family."""
        return self.planner_for(REGISTRY[kind].template)

    def planner_for(self, template: str) -> Planner:
        raise NotImplementedError

"""The backend seam: how one IR becomes C for one kind of target.

A backend is a folder: a class here (registered by its `name`), the kernel planners it uses
(each beside its templates), and optionally a template folder under templates/ that overlays
the shared templates (a template found there replaces the shared one of the same path). Lowering
asks the backend for each op's kernel plan, a frozen object stored in the op; templates read
the plan and decide nothing. Adding a backend touches nothing outside its folders.
"""
from __future__ import annotations

from typing import ClassVar

BACKENDS: dict[str, type["Backend"]] = {}


class Backend:
    name: ClassVar[str]
    doc: ClassVar[str] = ""
    # templates/<overlay>/ is searched before templates/ (None: the shared templates alone)
    template_overlay: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            BACKENDS[cls.name] = cls

    def planner(self, kind: str):
        """The kernel planner of a layer kind on this backend, or None: the kind's template
        reads only what the layer class gives (its kernel_consts)."""
        return self.planners.get(kind)

    planners: ClassVar[dict] = {}

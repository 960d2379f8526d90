"""The contract every optimizer fulfils, and the registry that collects them.

An optimizer is one small class plus its template (templates/optimizers/<kind>.c.j2): its spec
fields (which are also its run-time hyper-parameters, the fields of NAME_hyper after `lr`), how
many state slots it keeps per trainable parameter, and any rule between its fields.
Subclasses with a `kind` register themselves; nothing else dispatches on an optimizer's name.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ..fields import Field

OPTIMIZERS: dict[str, type["OptimizerKind"]] = {}


class OptimizerKind:
    kind: ClassVar[str]
    doc: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}  # lr first; every field is a hyper-parameter of NAME_hyper

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            OPTIMIZERS[cls.kind] = cls

    @property
    def template(self) -> str:
        return f"optimizers/{self.kind}.c.j2"

    def defaults(self) -> dict[str, Any]:
        return {key: f.default for key, f in self.fields.items()}

    def rule_errors(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, message) for values that are each valid but do not go together."""
        return []

    def state_slots(self, settings: dict[str, Any]) -> int:
        """Elements of optimizer state per trainable parameter."""
        return 0

"""The contract every optimizer fulfils, and the registry that collects them.

An optimizer is one small class plus its template (templates/optimizers/<kind>.c.j2): its spec
fields (which are also its run-time hyper-parameters, the fields of NAME_hyper after `lr`), how
many state slots it keeps per trainable parameter, and any rule between its fields.
Subclasses with a `kind` register themselves; nothing else dispatches on an optimizer's name.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..errors import FieldError
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

    def hyper_errors(self, values: dict[str, Any], dtype) -> list[str]:
        """What is wrong with run-time hyper-parameters (Model.hyper), one message each: a missing
        or unknown key, a value outside its field's range (lr: any finite number >= 0, since a
        schedule may reach 0), and a non-zero number that the model's dtype cannot hold (a float32
        lr of 1e-50 would be 0 there: no training at all, silently)."""
        errors = [f"'{key}' is not a hyper-parameter of {self.kind} (they are {', '.join(self.fields)})"
                  for key in values if key not in self.fields]
        info = np.finfo(dtype)
        for key, field in self.fields.items():
            if key not in values:
                errors.append(f"'{key}' is missing")
                continue
            value = values[key]
            try:
                if key == "lr":
                    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                            or not math.isfinite(value) or value < 0:
                        raise FieldError(f"must be a finite number >= 0, got {value!r}")
                    value = float(value)
                else:
                    value = field.parse(value)
            except FieldError as exc:
                errors.append(f"'{key}' {exc.message}")
                continue
            if isinstance(value, float) and value != 0 and not float(info.tiny) <= abs(value) <= float(info.max):
                errors.append(f"'{key}' = {value:g} is {'0' if abs(value) < float(info.tiny) else 'infinite'} in {info.dtype} "
                              f"(the model's dtype holds {info.tiny:g} to {info.max:g})")
        return errors

    def state_slots(self, settings: dict[str, Any]) -> int:
        """Elements of optimizer state per trainable parameter."""
        return 0

    def compiled_identity(self, settings: dict[str, Any]) -> tuple:
        """What of these settings the generated C depends on: the kind and its state size. Every
        field's value is a run-time hyper-parameter (NAME_hyper), so a template may read only
        program.optimizer_state_size, never a value (tests/test_build_cache.py renders every
        optimizer with other values of each field to hold it to that)."""
        return (self.kind, self.state_slots(settings))

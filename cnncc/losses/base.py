"""The contract every loss fulfils, and the registry that collects them.

A loss is one small class plus its template (templates/losses/<kind>.c.j2): what targets it
takes and how they are validated, how it fits the last layer, which tensor it reads, and the
metric training reports. Subclasses with a `kind` register themselves; nothing else anywhere
dispatches on a loss's name.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import Diagnostic

LOSSES: dict[str, type["LossKind"]] = {}


class LossKind:
    kind: ClassVar[str]
    doc: ClassVar[str] = ""
    takes_labels: ClassVar[bool] = False  # integer class labels [batch], else float targets like the output
    metric: ClassVar[str | None] = None  # what training reports beside the loss ("accuracy")
    # What people type for this loss in Keras or PyTorch (lower case, '_' for '-'): a spec that
    # says one of these gets a hint to this loss, and alias_hint says what to know when switching.
    aliases: ClassVar[tuple[str, ...]] = ()
    alias_hint: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            LOSSES[cls.kind] = cls

    @property
    def template(self) -> str:
        return f"losses/{self.kind}.c.j2"

    @property
    def targets_doc(self) -> str:
        return "class labels [batch]" if self.takes_labels else "[batch, OUTPUT_SIZE]"

    # --- checking ------------------------------------------------------------------
    def check_output(self, last, activation: str | None, computed_by, loc) -> list[Diagnostic]:
        """Does the loss fit what the last layer outputs? `last` is the CheckedLayer, `activation`
        the activation it ends in (a field or its own kind), `computed_by(name)` the layer whose
        kernel computes a tensor (None for the network input)."""
        return []

    # --- lowering ------------------------------------------------------------------
    def logits(self, output, ops) -> tuple[object, str | None]:
        """(the tensor the loss reads, the op whose backward it replaces or None)."""
        return output, None

    # --- runtime -------------------------------------------------------------------
    def validate_targets(self, y: np.ndarray, n: int, output_shape: tuple[int, ...], classes: int,
                         dtype: np.dtype) -> np.ndarray:
        """y as the contiguous array the C code reads, or ValueError saying what is allowed."""
        expected = (n,) + tuple(output_shape)
        if y.dtype.kind not in "biuf" or y.shape != expected:
            raise ValueError(f"targets must be a real array of shape {expected}, got {y.dtype} {tuple(y.shape)}")
        y = np.ascontiguousarray(y, dtype=dtype)
        if not np.isfinite(y).all():
            raise ValueError("targets contain NaN or infinite values")
        return y

    def random_targets(self, rng: np.random.Generator, n: int, output_shape: tuple[int, ...],
                       classes: int) -> np.ndarray:
        """Valid targets for n samples (benchmarks, gradient checks)."""
        return rng.standard_normal((n,) + tuple(output_shape))

    def hits(self, outputs: np.ndarray, targets: np.ndarray) -> int:
        """Correct predictions in a batch, for losses with a metric."""
        raise NotImplementedError(f"{self.kind} has no metric")


def loss_named_elsewhere(name: str) -> LossKind | None:
    """The loss that a name from Keras or PyTorch means, if any."""
    key = name.lower().replace("-", "_")
    return next((cls() for cls in LOSSES.values() if key in cls.aliases), None)

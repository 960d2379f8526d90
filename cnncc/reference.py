"""The spec language reference, generated from the declared schemas (so it cannot drift):
`cnncc layers` prints it, and the README embeds it (a test keeps them identical)."""
from __future__ import annotations

from .augment import AUGMENT_FIELDS
from .fields import Field
from .layers import REGISTRY
from .losses import LOSSES
from .optimizers import OPTIMIZERS
from .spec import INPUT_FIELDS, TRAINING_FIELDS


def _default(field: Field) -> str:
    if field.required:
        return "required"
    value = field.default
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return str(value[0]) if len(set(value)) == 1 else f"[{', '.join(map(str, value))}]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _table(fields: dict[str, Field]) -> list[str]:
    rows = ["| field | allowed | default | meaning |", "|---|---|---|---|"]
    for name, f in fields.items():
        rows.append(f"| `{name}` | {f.describe.replace('|', '&#124;')} | {_default(f)} | {f.doc} |")
    return rows


def spec_reference_markdown() -> str:
    lines = ["#### Top level", "",
             "| key | allowed | default |", "|---|---|---|",
             "| `name` | a C identifier `[A-Za-z_][A-Za-z0-9_]{0,63}`; prefixes every emitted C symbol | required |",
             "| `input` | `{channels, height, width}` (image) or `{channels, length}` (1-D signal) | required |",
             "| `dtype` | float32 &#124; float64 | float32 |",
             "| `layers` | a non-empty list of layers (below) | required |",
             f"| `loss` | {' &#124; '.join(LOSSES)} | none: inference only |",
             f"| `optimizer` | `{{type: {' &#124; '.join(OPTIMIZERS)}, ...}}` (below) | `{{type: sgd, lr: 0.01}}` |",
             "| `training` | defaults for `cnncc train` and `Model.fit` (below) | all defaults |",
             "", "#### `input`", "", *_table(INPUT_FIELDS), ""]
    for kind, cls in OPTIMIZERS.items():
        lines += [f"#### `optimizer: {{type: {kind}}}`", "", *_table(cls.fields), ""]
    lines += ["#### `training`", "", *_table(TRAINING_FIELDS),
              "| `augment` | a mapping (below) | none | applied to each training batch, never in evaluation |", "",
              "#### `training: {augment: ...}`", "", *_table(AUGMENT_FIELDS), "",
              "#### Layers", "",
              "Every layer has `type`, an optional `name` (a C identifier, unique ignoring case; "
              "default `<type>_<n>`) and optional `inputs` (a list of earlier layer names or `input`; "
              "default: the previous layer), and an optional `trainable` (`false` freezes its parameters for "
              "fine-tuning: no update, no gradient or optimizer state, no backward before the first trainable "
              "layer; `Model.freeze`/`unfreeze` do the same from Python).", ""]
    for kind, cls in REGISTRY.items():
        lines.append(f"##### `{kind}`: {cls.doc}")
        lines.append("")
        if cls.fields:
            lines += [*_table(cls.fields)]
        else:
            lines.append("No fields.")
        if cls.min_inputs > 1:
            lines += ["", f"Takes {cls.min_inputs} or more `inputs`."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

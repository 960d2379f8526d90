"""What `fit` returns: one row per epoch, which callbacks read, CSV/JSON files hold and
`cnncc plot` draws.

A History keeps the columns of the epochs trained (loss, accuracy or the loss's metric,
val_loss, val_accuracy, lr, seconds, images_per_second); a column a run does not have (no
validation, or a loss without accuracy) holds None. `history["loss"]` is the list of one
column, as the dict `fit` used to return, so code written against that keeps working.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .files import write_bytes_atomically

COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second")


class History:
    """Per-epoch records of a training run (epochs numbered from 1, as printed)."""

    def __init__(self, rows=()):
        self.rows: list[dict] = []
        for row in rows:
            self.append(row)

    def append(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown history column(s) {', '.join(sorted(unknown))}; "
                             f"columns: {', '.join(COLUMNS)}")
        self.rows.append({column: row.get(column) for column in COLUMNS})

    # ---- the dict-like surface fit returned before ------------------------------------
    def __getitem__(self, column: str) -> list:
        if column not in COLUMNS:
            raise KeyError(f"{column!r}: a history has the columns {', '.join(COLUMNS)}")
        return [row[column] for row in self.rows]

    def __contains__(self, column) -> bool:
        return column in COLUMNS and any(row[column] is not None for row in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[str]:
        """The columns that hold a value in some epoch."""
        return [column for column in COLUMNS if column in self]

    @property
    def epochs(self) -> list[int]:
        return self["epoch"]

    def last(self, column: str):
        """The latest value of a column, or None."""
        return self.rows[-1][column] if self.rows else None

    def __repr__(self) -> str:
        return f"<History: {len(self)} epoch(s), columns {', '.join(self.keys())}>"

    # ---- files ---------------------------------------------------------------------------
    def to_csv(self, path) -> None:
        """One header line, one line per epoch; an empty field where a column has no value."""
        lines = [",".join(COLUMNS)]
        for row in self.rows:
            lines.append(",".join("" if row[c] is None else repr(row[c]) for c in COLUMNS))
        write_text_atomically(path, "\n".join(lines) + "\n")

    def to_json(self, path) -> None:
        write_text_atomically(path, json.dumps({"columns": list(COLUMNS), "epochs": self.rows}, indent=1) + "\n")

    @classmethod
    def from_csv(cls, path) -> "History":
        """Read a file written by to_csv (or CSVLogger); a clear ValueError on anything else."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the history: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (expected a CSV history)") from None
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if not header or "epoch" not in header or "loss" not in header:
            raise ValueError(f"{path}: not a training history (expected a CSV whose header has at least "
                             f"epoch and loss, as `cnncc train --log` or History.to_csv write)")
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise ValueError(f"{path}: unknown column(s) {', '.join(unknown)}; columns: {', '.join(COLUMNS)}")
        history = cls()
        for line_number, fields in enumerate(reader, 2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line_number}: {len(fields)} fields, the header has {len(header)}")
            row = {}
            for column, text_value in zip(header, fields):
                row[column] = _parse_number(path, line_number, column, text_value)
            history.append(row)
        return history


def _parse_number(path, line_number: int, column: str, text: str):
    if text == "":
        return None
    try:
        value = int(text) if column == "epoch" else float(text)
    except ValueError:
        raise ValueError(f"{path}:{line_number}: {column} is {text!r}, expected a number") from None
    if column != "epoch" and not math.isfinite(value):
        raise ValueError(f"{path}:{line_number}: {column} is {text}, expected a finite number")
    return value


def write_text_atomically(path, text: str) -> None:
    """The old file or the complete new one (files.write_atomically), parents made."""
    write_bytes_atomically(path, text.encode(), make_parents=True)

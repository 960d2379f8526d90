"""Errors a user can cause, reported the way a compiler reports them.

A spec problem is a `Diagnostic`: where (file:line:col), which layer and field, what is
wrong and, when it helps, a hint. `SpecError` carries every diagnostic found, so a user
fixes a spec in one pass instead of one error per run.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A 1-based line and column in the spec source."""

    line: int
    col: int


@dataclass(frozen=True)
class Diagnostic:
    message: str
    loc: Loc | None = None
    layer: str | None = None  # "layer 3 'conv2' (conv2d)"
    field: str | None = None
    hint: str | None = None

    def format(self, path: str) -> str:
        where = f"{path}:{self.loc.line}:{self.loc.col}" if self.loc else path
        what = f"{self.layer}: {self.message}" if self.layer else self.message
        text = f"{where}: error: {what}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class SpecError(ValueError):
    """An invalid spec: every problem found, each with its location."""

    def __init__(self, diagnostics: list[Diagnostic], path: str = "<spec>"):
        self.diagnostics = list(diagnostics)
        self.path = path
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(d.format(self.path) for d in self.diagnostics)


class SpecFileError(SpecError):
    """The spec file itself cannot be read (missing, a directory, no permission): `cnncc` exits 3."""


class FieldError(Exception):
    """Raised by a field validator; the loader turns it into a located Diagnostic."""

    def __init__(self, message: str, hint: str | None = None, item: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.item = item  # which item of a list value is wrong, to point at it rather than the list


def closest(word: str, choices) -> str | None:
    """The choice a misspelt word most likely meant, if any is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str | None:
    close = closest(word, choices)
    return f"did you mean '{close}'?" if close else None

"""Declarative field schemas: type, default, range and a one-line doc per field.

Every layer kind and every top-level section declares its fields with these; the loader
validates all of them in one place, and the README reference and `--help` print the same
declarations. A validator takes the plain YAML value and returns the parsed value or raises
FieldError with what is allowed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import FieldError, did_you_mean

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_INT = 1 << 20  # any single size in a spec; totals are checked separately


class _Required:
    def __repr__(self):
        return "required"


REQUIRED = _Required()


@dataclass(frozen=True)
class Field:
    parse: Callable[[Any], Any]
    describe: str  # what values are allowed, e.g. "a positive integer"
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _type_name(value) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):  # repr: a newline or escape in the spec never reaches the terminal raw
        return f"the string {value!r}" if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value, lo: int, hi: int = MAX_INT, what: str = "an integer") -> int:
    if not _is_int(value):
        hint = "write it without a decimal point" if isinstance(value, float) and value.is_integer() else None
        raise FieldError(f"must be {what}, got {_type_name(value)}", hint)
    if value < lo:
        raise FieldError(f"must be at least {lo}, got {value}")
    if value > hi:
        raise FieldError(f"must be at most {hi}, got {value}")
    return value


def each_item(values: list, parse: Callable) -> tuple:
    """parse applied to every item of a list value; a FieldError names the item it is about."""
    parsed = []
    for index, value in enumerate(values):
        try:
            parsed.append(parse(value))
        except FieldError as exc:
            raise FieldError(exc.message, exc.hint, item=index) from None
    return tuple(parsed)


def integer(lo: int = 1, hi: int = MAX_INT) -> tuple[Callable, str]:
    describe = "a positive integer" if lo == 1 else f"an integer >= {lo}"
    return (lambda v: check_int(v, lo, hi)), describe


def int_pair(lo: int = 1) -> tuple[Callable, str]:
    """An int n (meaning n x n) or a list [a, b]."""

    def parse(value):
        if isinstance(value, list):
            if len(value) != 2:
                raise FieldError(f"must be an integer or a list of 2 integers, got a list of {len(value)}")
            return each_item(value, lambda item: check_int(item, lo))
        n = check_int(value, lo, what="an integer or [height, width]")
        return (n, n)

    return parse, ("a positive integer or [h, w]" if lo == 1 else f"an integer >= {lo} or [h, w]")


def padding(one_d: bool = False) -> tuple[Callable, str]:
    """'same' | 'valid' | (ph, pw) | (top, left, bottom, right); a 1-D signal is a height-1 image,
    so its padding is (0, p), or (0, left, 0, right) for a list [left, right]."""
    allowed = ("an integer, [left, right], 'same' or 'valid'" if one_d
               else "an integer, [ph, pw], [top, left, bottom, right], 'same' or 'valid'")

    def parse(value):
        if value in ("same", "valid"):
            return value
        if isinstance(value, str):
            raise FieldError(f"must be {allowed}, got {_type_name(value)}", did_you_mean(value, ("same", "valid")))
        if isinstance(value, list):
            sizes = (2,) if one_d else (2, 4)
            if len(value) not in sizes:
                counts = "2 integers [left, right]" if one_d else "2 integers [ph, pw] or 4 [top, left, bottom, right]"
                raise FieldError(f"must be an integer or a list of {counts}, got a list of {len(value)}")
            sides = each_item(value, lambda item: check_int(item, 0))
            return (0, sides[0], 0, sides[1]) if one_d else sides
        n = check_int(value, 0, what=allowed)
        return (0, n) if one_d else (n, n)

    return parse, ("0 | int | [left, right] | same | valid" if one_d
                   else "0 | int | [ph, pw] | [top, left, bottom, right] | same | valid")


def boolean() -> tuple[Callable, str]:
    def parse(value):
        if not isinstance(value, bool):
            raise FieldError(f"must be true or false, got {_type_name(value)}")
        return value

    return parse, "true | false"


def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
    interval = f"{left}{lo:g}, {hi:g}{right}"

    def parse(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(f"must be a number in {interval}, got {_type_name(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer past the double range
            raise FieldError(f"must be a number in {interval}, got an integer too large for one") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo) \
                or (hi_open and value == hi):
            raise FieldError(f"must be a number in {interval}, got {value:g}")
        return value

    return parse, f"a number in {interval}"


def choice(options: tuple[str, ...]) -> tuple[Callable, str]:
    listed = " | ".join(options)

    def parse(value):
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(value, options) if isinstance(value, str) else None
            raise FieldError(f"must be one of {listed}, got {_type_name(value)}", hint)
        return value

    return parse, listed


GENERATED_PREFIX = "cnncc"  # every name the generated C makes up for itself starts with it (any case)


def reserved_identifier_problem(name: str) -> str | None:
    """Why a name cannot become part of a C symbol, or None. Names are joined with '_' and
    upper-cased into macros (conv1 -> NET_CONV1_FORWARD, P_CONV1_WEIGHT), so a leading or
    trailing underscore or a double underscore would make an identifier C reserves for the
    implementation (_X, __x), where system headers' own guards and macros live."""
    if name.startswith("_"):
        return "starts with an underscore (C reserves _X and __x names for the compiler and libc)"
    if name.endswith("_"):
        return "ends with an underscore (joined to a suffix, it would make a reserved __ identifier)"
    if "__" in name:
        return "contains a double underscore (C reserves such identifiers for the compiler and libc)"
    if name.lower().startswith(GENERATED_PREFIX):
        return f"starts with '{GENERATED_PREFIX}', which is reserved for the names cnncc generates"
    return None


def identifier() -> tuple[Callable, str]:
    def parse(value):
        if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
            raise FieldError(
                f"must be a C identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters), got {_type_name(value)}",
                "names become C symbols: use letters, digits and underscores")
        problem = reserved_identifier_problem(value)
        if problem:
            raise FieldError(f"{value!r} {problem}", "rename it: e.g. drop the underscores at the ends")
        return value

    return parse, "a C identifier"


def name_list() -> tuple[Callable, str]:
    parse_name, _ = identifier()

    def parse(value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise FieldError(f"must be a non-empty list of layer names, got {_type_name(value)}")
        return each_item(value, parse_name)

    return parse, "a list of earlier layer names (or 'input')"


def field(validator: tuple[Callable, str], default: Any = REQUIRED, doc: str = "") -> Field:
    parse, describe = validator
    return Field(parse, describe, default, doc)

"""Values as C text: the only way a name, number or comment reaches generated C.

Each filter refuses anything that is not a validated identifier, an int, a finite float
(written so it round-trips exactly), a kernel formula written in cnncc, or safe comment text.
"""
from __future__ import annotations

import math
import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_EXPR = re.compile(r"[A-Za-z0-9_ .+\-*/()<>=?:\[\]]*")  # kernel formulas written in layers/, never from a spec


def c_ident(value) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ValueError(f"not a valid C identifier: {value!r}")
    return value


def c_int(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 62:
        raise ValueError(f"not a valid C integer constant: {value!r}")
    return str(value)


def c_float(value) -> str:
    """A finite float as a C literal that parses back to the same double."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = repr(float(value))
    return text if any(ch in text for ch in ".e") else text + ".0"


def c_expr(value) -> str:
    if not isinstance(value, str) or not _EXPR.fullmatch(value):
        raise ValueError(f"not a kernel expression: {value!r}")
    return value


def c_comment(value) -> str:
    """Text inside a /* */ comment: nothing that could close it, splice a line (a backslash,
    or the trigraph ??/ that -std=c99 turns into one) or start a directive."""
    text = str(value)
    if "*/" in text or "/*" in text or "\\" in text or "??" in text or any(ord(ch) < 32 for ch in text):
        raise ValueError(f"unsafe text for a C comment: {value!r}")
    return text

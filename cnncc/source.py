"""YAML text -> a tree of located nodes, refusing anything unsafe.

`yaml.compose` (safe loader) keeps a line/column mark on every node, which is what lets
every later error point at the exact place in the user's file. Nothing is ever
constructed from a YAML tag other than the plain scalar types, so `!!python/object` and
friends cannot run code; aliases are followed with a budget, so an alias bomb ends in an
error instead of filling memory.
"""
from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Diagnostic, Loc

MAX_SPEC_BYTES = 256 << 10  # a real spec is a few KB (ResNet-152 spelt out: ~60 KB); bounds parse time (~3 s)
MAX_NODES = 100_000  # nodes after following aliases
MAX_DEPTH = 32

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_TOO_DEEP = f"spec is nested too deeply (the limit is {MAX_DEPTH} levels)"


class _Loader(yaml.SafeLoader):
    """SafeLoader with the spec's plain scalars, refusing deep nesting while it composes.

    A spec has no dates, so 2024-01-01 stays a string; 1e-3 is a float (YAML 1.1 wants
    1.0e-3). Depth is counted here because composing recurses once per level: checking
    only afterwards would let a 10,000-deep list exhaust the stack, with no location.
    (A too deep scalar is left to the converter, which counts depth the same way.)
    """

    _depth = 0

    def compose_node(self, parent, index):
        if self._depth > MAX_DEPTH and self.check_event(yaml.CollectionStartEvent):
            raise SourceError(Diagnostic(_TOO_DEEP, _loc(self.peek_event().start_mark)))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


class _CLoader(getattr(yaml, "CSafeLoader", object)):
    """libyaml's parser with the same implicit types as _Loader."""

    yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


_FastLoader = _CLoader if getattr(yaml, "__with_libyaml__", False) else None


@dataclass
class Node:
    loc: Loc | None

    def plain(self) -> Any:
        raise NotImplementedError


@dataclass
class Scalar(Node):
    value: Any = None

    def plain(self):
        return self.value


@dataclass
class Seq(Node):
    items: list[Node] = field(default_factory=list)

    def plain(self):
        return [item.plain() for item in self.items]


@dataclass
class Map(Node):
    items: dict[str, Node] = field(default_factory=dict)
    key_locs: dict[str, Loc | None] = field(default_factory=dict)

    def plain(self):
        return {key: value.plain() for key, value in self.items.items()}


class SourceError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _loc(mark) -> Loc:
    return Loc(mark.line + 1, mark.column + 1)


def parse_text(data: bytes | str) -> Node:
    """Parse one YAML document into located nodes; raise SourceError on anything wrong."""
    if isinstance(data, bytes):
        if len(data) > MAX_SPEC_BYTES:  # a file is read only up to the limit: its length is unknown
            raise SourceError(Diagnostic(
                f"spec is larger than the limit of {MAX_SPEC_BYTES} bytes", Loc(1, 1)))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            col = exc.start - (before.rfind(b"\n") + 1) + 1
            raise SourceError(Diagnostic(
                f"spec is not valid UTF-8 (byte 0x{data[exc.start]:02x})", Loc(line, col))) from None
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
            raise SourceError(Diagnostic(
                f"spec is larger than the limit of {MAX_SPEC_BYTES} bytes", Loc(1, 1)))
    with without_gc_pauses():
        root = _compose_fast(text)
        if root is None:
            root = _compose(text)
        if root is None:
            raise SourceError(Diagnostic(
                "spec is empty: expected a mapping with 'name', 'input' and 'layers'", Loc(1, 1)))
        return _Converter().convert(root, 0)


@contextmanager
def without_gc_pauses():
    """Parsing allocates ~10 objects per spec line and frees none of them: the cycle collector
    would rescan them all again and again (half the time of a spec at the size limit) for no
    garbage, since node trees hold no cycles. It runs again when the block ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _compose_fast(text: str):
    """The node tree through libyaml (ten times faster than PyYAML's own parser: a spec at the
    size limit parses in under a second), or None to take the pure-Python path, which gives
    every diagnostic: on any problem, when a document is too deep, or without libyaml. Depth is
    counted over the event stream first, because libyaml's composer recurses once per level."""
    if _FastLoader is None:
        return None
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_FastLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return None
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.compose(text, Loader=_FastLoader)
    except yaml.YAMLError:
        return None


def _compose(text: str):
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = ": ".join(p for p in (exc.context, exc.problem) if p)
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = ("YAML indents with spaces, never tabs: replace the tab(s) with spaces"
                if "\t" in line[:len(line) - len(line.lstrip())] or "'\\t'" in message else None)
        raise SourceError(Diagnostic(f"YAML syntax: {message}", _loc(mark) if mark else None, hint=hint)) from None
    except yaml.reader.ReaderError as exc:  # a control character; it has an offset, not a mark
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SourceError(Diagnostic(
            f"YAML syntax: character U+{exc.character:04X} is not allowed in YAML", Loc(line, col))) from None
    except yaml.YAMLError as exc:
        raise SourceError(Diagnostic(f"YAML syntax: {exc}")) from None


_YAML11_BOOLEANS = {"yes", "no", "on", "off"}
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")


def _refuse_yaml11_only(node, loc: Loc) -> None:
    """Plain scalars that YAML 1.1 (PyYAML) and YAML 1.2 read differently are refused, so a
    spec means the same to every reader: octal 010, sexagesimal 1:30, binary 0b11, digit
    separators 1_000, and the booleans yes/no/on/off. (Dates are never read as dates.)"""
    text = node.value
    if node.tag == "tag:yaml.org,2002:bool" and text.lower() in _YAML11_BOOLEANS:
        meaning = "true" if text.lower() in ("yes", "on") else "false"
        problem, hint = (f"'{text}' is the boolean {meaning} in YAML 1.1 but a string in YAML 1.2",
                         f"write {meaning} for a boolean, or quote it ('{text}') for a string")
    elif node.tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return
    elif ":" in text:
        problem, hint = (f"'{text}' is a base-60 number in YAML 1.1 (1:30 is 90) but a string in YAML 1.2",
                         f"write the number you mean, or quote it ('{text}') for a string")
    elif node.tag == "tag:yaml.org,2002:int" and _LEADING_ZERO.fullmatch(text):
        problem, hint = (f"'{text}' is octal in YAML 1.1 (010 is 8) but decimal in YAML 1.2",
                         "write the number without leading zeros, or quote it for a string")
    elif text.lstrip("+-").lower().startswith("0b") or "_" in text:
        problem, hint = (f"'{text}' is a number in YAML 1.1 but a string in YAML 1.2",
                         "write the number in plain decimal digits (no 0b prefix, no _ separators)")
    else:
        return
    raise SourceError(Diagnostic(problem, loc, hint=hint))


class _Converter:
    def __init__(self):
        self.count = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def convert(self, node, depth: int) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise SourceError(Diagnostic(
                f"spec expands to more than {MAX_NODES} YAML nodes (an alias bomb?)", _loc(node.start_mark)))
        if depth > MAX_DEPTH:  # a scalar, or an alias placed deeper than its anchor
            raise SourceError(Diagnostic(_TOO_DEEP, _loc(node.start_mark)))
        loc = _loc(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                raise SourceError(Diagnostic(
                    f"YAML tag or value type '{node.tag}' is not allowed; "
                    "use plain numbers, strings, booleans, lists and mappings", loc))
            if not node.style and node.tag != "tag:yaml.org,2002:str":  # plain: None (PyYAML), "" (libyaml)
                _refuse_yaml11_only(node, loc)
            return Scalar(loc, self.constructor.construct_object(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise SourceError(Diagnostic(f"YAML tag '{node.tag}' is not allowed", loc))
            return Seq(loc, [self.convert(item, depth + 1) for item in node.value])
        if node.tag != _MAP_TAG:
            raise SourceError(Diagnostic(f"YAML tag '{node.tag}' is not allowed", loc))
        result = Map(loc)
        for key_node, value_node in node.value:
            key_loc = _loc(key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SourceError(Diagnostic("YAML merge keys (<<) are not supported", key_loc))
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise SourceError(Diagnostic("mapping keys must be plain strings", key_loc))
            key = key_node.value
            if key in result.items:
                raise SourceError(Diagnostic(f"duplicate key {key!r}", key_loc))
            result.items[key] = self.convert(value_node, depth + 1)
            result.key_locs[key] = key_loc
        return result


def from_python(value: Any, depth: int = 0) -> Node:
    """A dict given from Python goes through the same validation, without locations."""
    if depth > MAX_DEPTH:
        raise SourceError(Diagnostic(_TOO_DEEP))
    if isinstance(value, dict):
        result = Map(None)
        for key, item in value.items():
            if not isinstance(key, str):
                raise SourceError(Diagnostic(f"mapping keys must be strings, got {key!r}"))
            result.items[key] = from_python(item, depth + 1)
            result.key_locs[key] = None
        return result
    if isinstance(value, (list, tuple)):
        return Seq(None, [from_python(item, depth + 1) for item in value])
    if value is None or isinstance(value, (str, int, float, bool)):
        return Scalar(None, value)
    raise SourceError(Diagnostic(f"unsupported value of type {type(value).__name__} in spec"))

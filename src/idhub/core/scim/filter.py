"""SCIM filters and attribute paths (RFC 7644 §3.4.2.2, §3.5.2): parsed once into a small tree,
evaluated against a resource document.

Attribute names compare case-insensitively, as do string values (every attribute idhub serves
is `caseExact: false` except `id`, whose values are lower-case anyway). A multi-valued attribute
matches when any of its values does; a complex one without a sub-attribute compares its
`value`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from idhub.core.scim.errors import invalid_filter, invalid_path

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_SCHEMAS = (
    "urn:ietf:params:scim:schemas:core:2.0:User",
    "urn:ietf:params:scim:schemas:core:2.0:Group",
)
OPERATORS = ("eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le")
MAX_FILTER = 2000

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<punct>[()\[\]])|(?P<word>[^\s()\[\]"]+))'
)


@dataclass(frozen=True)
class AttrPath:
    """`urn:...:name.sub`, split: the schema (None for the core one) and the names."""

    schema: str | None
    names: tuple[str, ...]

    def __str__(self) -> str:
        dotted = ".".join(self.names)
        return f"{self.schema}:{dotted}" if self.schema else dotted


@dataclass(frozen=True)
class Compare:
    attr: AttrPath
    op: str
    value: Any


@dataclass(frozen=True)
class Present:
    attr: AttrPath


@dataclass(frozen=True)
class Logical:
    op: str  # "and" / "or"
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class ValuePath:
    """`emails[type eq "work"]`: the filter applies to each value of a multi-valued attribute."""

    attr: AttrPath
    inner: Node


Node = Compare | Present | Logical | Not | ValuePath


@dataclass(frozen=True)
class PatchPath:
    """A PATCH `path`: an attribute, optionally narrowed by a value filter and a sub-attribute."""

    attr: AttrPath
    value_filter: Node | None = None
    sub: str | None = None


def parse_attr(text: str) -> AttrPath:
    schema: str | None = None
    rest = text
    if text.lower().startswith("urn:"):
        for known in (ENTERPRISE, *CORE_SCHEMAS):
            if text.lower().startswith(known.lower() + ":"):
                schema, rest = (None if known in CORE_SCHEMAS else known), text[len(known) + 1 :]
                break
            if text.lower() == known.lower():
                return AttrPath(known if known not in CORE_SCHEMAS else None, ())
        else:
            raise invalid_path(f"unknown schema in attribute {text[:100]!r}")
    names = tuple(rest.split("."))
    if not all(re.fullmatch(r"\$?[A-Za-z][A-Za-z0-9_-]*", n) for n in names):
        raise invalid_path(f"{text[:100]!r} is not an attribute path")
    return AttrPath(schema, names)


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_FILTER:
            raise invalid_filter(f"filter longer than {MAX_FILTER} characters")
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise invalid_filter(f"cannot read the filter at character {pos}")
            kind = m.lastgroup or "word"
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise invalid_filter("the filter ends too early")
        self.i += 1
        return token

    def expect(self, punct: str) -> None:
        if self.take() != ("punct", punct):
            raise invalid_filter(f"expected {punct!r} in the filter")

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() in words:
            self.i += 1
            return token[1].lower()
        return None

    def expression(self) -> Node:
        node = self.conjunction()
        while self.keyword("or"):
            node = Logical("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.keyword("and"):
            node = Logical("and", node, self.negation())
        return node

    def negation(self) -> Node:
        if self.keyword("not"):
            self.expect("(")
            inner = self.expression()
            self.expect(")")
            return Not(inner)
        return self.atom()

    def atom(self) -> Node:
        kind, text = self.take()
        if (kind, text) == ("punct", "("):
            inner = self.expression()
            self.expect(")")
            return inner
        if kind != "word":
            raise invalid_filter("expected an attribute name in the filter")
        attr = parse_attr(text)
        if self.peek() == ("punct", "["):
            self.i += 1
            inner = self.expression()
            self.expect("]")
            return ValuePath(attr, inner)
        if self.keyword("pr"):
            return Present(attr)
        op = self.keyword(*OPERATORS)
        if op is None:
            raise invalid_filter(f"expected an operator after {text[:100]!r}")
        return Compare(attr, op, self.value())

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            try:
                return json.loads(text)
            except ValueError as exc:
                raise invalid_filter("a string in the filter is not valid JSON") from exc
        if kind == "word":
            lowered = text.lower()
            if lowered in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[lowered]
            try:
                return json.loads(text)
            except ValueError:
                pass
        raise invalid_filter(f"{text[:100]!r} is not a filter value")

    def done(self) -> None:
        if self.peek() is not None:
            raise invalid_filter(f"unexpected {self.peek()[1][:100]!r} in the filter")  # type: ignore[index]


def parse_filter(text: str) -> Node:
    parser = _Parser(text)
    node = parser.expression()
    parser.done()
    return node


def parse_patch_path(text: str) -> PatchPath:
    """`members`, `name.givenName`, `emails[type eq "work"].value`, `members[value eq "x"]`."""
    head, bracket, rest = text.partition("[")
    if not bracket:
        return PatchPath(parse_attr(text.strip()))
    inner, close, tail = rest.rpartition("]")
    if not close:
        raise invalid_path(f"{text[:100]!r}: unclosed '['")
    try:
        value_filter = parse_filter(inner)
    except Exception as exc:
        raise invalid_path(f"{text[:100]!r}: bad value filter") from exc
    sub = None
    if tail:
        if not re.fullmatch(r"\.[A-Za-z][A-Za-z0-9_-]*", tail):
            raise invalid_path(f"{text[:100]!r}: bad sub-attribute")
        sub = tail[1:]
    return PatchPath(parse_attr(head.strip()), value_filter, sub)


# ------------------------------------------------------------------ evaluation


def lookup(container: dict[str, Any], name: str) -> tuple[str | None, Any]:
    """The key that holds `name` (case-insensitive) and its value."""
    if name in container:
        return name, container[name]
    lowered = name.lower()
    for key, value in container.items():
        if key.lower() == lowered:
            return key, value
    return None, None


def values_at(doc: dict[str, Any], attr: AttrPath) -> list[Any]:
    """Every value the path reaches (lists flattened), or [] when absent."""
    current: list[Any] = [doc]
    if attr.schema:
        current = [lookup(doc, attr.schema)[1]]
    for name in attr.names:
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                value = lookup(item, name)[1]
                if isinstance(value, list):
                    found.extend(value)
                elif value is not None:
                    found.append(value)
        current = found
    return [v for v in current if v is not None]


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if isinstance(actual, dict):
        actual = lookup(actual, "value")[1]
    if isinstance(actual, bool) or isinstance(expected, bool) or expected is None:
        return op == ("eq" if actual == expected else "ne")
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        a: Any = actual
        b: Any = expected
    elif isinstance(actual, str) and isinstance(expected, str):
        a, b = actual.lower(), expected.lower()
    else:
        return op == "ne"
    if op == "eq":
        return bool(a == b)
    if op == "ne":
        return bool(a != b)
    if isinstance(a, str) and op in ("co", "sw", "ew"):
        return {"co": b in a, "sw": a.startswith(b), "ew": a.endswith(b)}[op]
    if op in ("co", "sw", "ew"):
        return False
    return bool({"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op])


def matches(node: Node, doc: dict[str, Any]) -> bool:
    if isinstance(node, Logical):
        if node.op == "and":
            return matches(node.left, doc) and matches(node.right, doc)
        return matches(node.left, doc) or matches(node.right, doc)
    if isinstance(node, Not):
        return not matches(node.inner, doc)
    if isinstance(node, Present):
        return any(v not in ("", [], {}) for v in values_at(doc, node.attr))
    if isinstance(node, ValuePath):
        return any(
            isinstance(item, dict) and matches(node.inner, item)
            for item in values_at(doc, node.attr)
        )
    found = values_at(doc, node.attr)
    if node.op == "ne":
        return not any(_compare(v, "eq", node.value) for v in found)
    return any(_compare(v, node.op, node.value) for v in found)

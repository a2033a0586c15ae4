"""Listing resources (RFC 7644 §3.4.2): filter, sortBy/sortOrder, startIndex/count, and the
attributes/excludedAttributes projection also used for single resources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from idhub.core.scim.errors import invalid_value
from idhub.core.scim.filter import (
    AttrPath,
    Node,
    lookup,
    matches,
    parse_attr,
    parse_filter,
    values_at,
)

DEFAULT_COUNT = 100
MAX_RESULTS = 1000
# Returned whatever a client asks (RFC 7643 §2.4 `returned: always`).
_ALWAYS = frozenset({"id", "schemas"})


@dataclass(frozen=True)
class ListQuery:
    filter: Node | None = None
    sort_by: AttrPath | None = None
    descending: bool = False
    start_index: int = 1
    count: int = DEFAULT_COUNT
    attributes: tuple[AttrPath, ...] = ()
    excluded: tuple[AttrPath, ...] = ()


def _int(name: str, value: str | None, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise invalid_value(f"{name} must be an integer") from exc


def _paths(value: str | None) -> tuple[AttrPath, ...]:
    if not value:
        return ()
    return tuple(parse_attr(part.strip()) for part in value.split(",") if part.strip())


def parse_query(params: dict[str, str | None]) -> ListQuery:
    """From the query string (or a POST /.search body), names as the RFC spells them."""
    order = (params.get("sortOrder") or "ascending").lower()
    if order not in ("ascending", "descending"):
        raise invalid_value("sortOrder must be ascending or descending")
    text = params.get("filter")
    sort_by = params.get("sortBy")
    return ListQuery(
        filter=parse_filter(text) if text else None,
        sort_by=parse_attr(sort_by) if sort_by else None,
        descending=order == "descending",
        # RFC 7644 §3.4.2.4: below 1 is read as 1; a negative count as 0.
        start_index=max(1, _int("startIndex", params.get("startIndex"), 1)),
        count=min(MAX_RESULTS, max(0, _int("count", params.get("count"), DEFAULT_COUNT))),
        attributes=_paths(params.get("attributes")),
        excluded=_paths(params.get("excludedAttributes")),
    )


def _sort_key(doc: dict[str, Any], attr: AttrPath) -> tuple[int, Any]:
    found = values_at(doc, attr)
    if not found:
        return (1, "")  # missing values sort last (ascending)
    value = found[0]
    if isinstance(value, dict):
        value = lookup(value, "value")[1]
    return (0, value.lower() if isinstance(value, str) else str(value))


def select(docs: Sequence[dict[str, Any]], query: ListQuery) -> tuple[int, list[dict[str, Any]]]:
    chosen = [d for d in docs if query.filter is None or matches(query.filter, d)]
    if query.sort_by is not None:
        sort_by = query.sort_by
        chosen.sort(key=lambda d: _sort_key(d, sort_by), reverse=query.descending)
    start = query.start_index - 1
    return len(chosen), chosen[start : start + query.count]


def _names(doc: dict[str, Any], attr: AttrPath) -> tuple[dict[str, Any] | None, list[str]]:
    holder: Any = lookup(doc, attr.schema)[1] if attr.schema else doc
    return (holder if isinstance(holder, dict) else None), list(attr.names)


def project(doc: dict[str, Any], query: ListQuery) -> dict[str, Any]:
    if query.attributes:
        out: dict[str, Any] = {k: v for k, v in doc.items() if k in _ALWAYS}
        for attr in query.attributes:
            _copy(doc, out, attr)
        return out
    if query.excluded:
        out = {k: v for k, v in doc.items()}
        for attr in query.excluded:
            _drop(out, attr)
        return out
    return doc


def _copy(doc: dict[str, Any], out: dict[str, Any], attr: AttrPath) -> None:
    source: Any = doc
    target = out
    keys = ([attr.schema] if attr.schema else []) + list(attr.names)
    for depth, name in enumerate(keys):
        key, value = lookup(source, name) if isinstance(source, dict) else (None, None)
        if key is None:
            return
        if depth == len(keys) - 1 or not isinstance(value, dict):
            if isinstance(value, list) and depth < len(keys) - 1:
                sub = keys[depth + 1]
                target[key] = [
                    {k: v for k, v in item.items() if k.lower() == sub.lower()}
                    for item in value
                    if isinstance(item, dict)
                ]
            else:
                target[key] = value
            return
        target = target.setdefault(key, {})
        source = value


def _drop(out: dict[str, Any], attr: AttrPath) -> None:
    keys = ([attr.schema] if attr.schema else []) + list(attr.names)
    if keys and keys[0].lower() in _ALWAYS:
        return
    holder: Any = out
    for name in keys[:-1]:
        key, value = lookup(holder, name)
        if key is None or not isinstance(value, dict):
            return
        holder[key] = value = dict(value)
        holder = value
    key = lookup(holder, keys[-1])[0] if keys else None
    if key is not None:
        del holder[key]

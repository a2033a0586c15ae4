"""SCIM PATCH (RFC 7644 §3.5.2) applied to a resource document, leniently where the big
provisioning clients are known to differ from the RFC: `op` in any case, no `path` with a
partial resource (whose keys may themselves be paths such as `name.givenName` or
`urn:...:enterprise:2.0:User:department`), `remove` of `members` with a `value` list, and an
`add`/`replace` on a value path with no match that creates the value (`emails[type eq
"work"].value`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from idhub.core.scim.errors import ScimError, invalid_path, invalid_syntax, invalid_value
from idhub.core.scim.filter import (
    AttrPath,
    Compare,
    PatchPath,
    lookup,
    matches,
    parse_patch_path,
)

OPS = ("add", "replace", "remove")
MAX_OPERATIONS = 1000
# Attributes a client may not write (RFC 7643 §3.1: `id` and `meta` are the server's).
READ_ONLY = frozenset({"id", "meta", "schemas"})


def apply_patch(doc: dict[str, Any], operations: Sequence[Any]) -> dict[str, Any]:
    """A new document with every operation applied in order (all or nothing)."""
    if not isinstance(operations, list) or not operations:
        raise invalid_syntax("Operations must be a non-empty list")
    if len(operations) > MAX_OPERATIONS:
        raise invalid_syntax(f"at most {MAX_OPERATIONS} operations per request")
    out = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict):
            raise invalid_syntax("each operation must be an object")
        op = str(operation.get("op", "")).lower()
        if op not in OPS:
            raise invalid_syntax(f"op must be one of {', '.join(OPS)}")
        path = operation.get("path")
        value = operation.get("value")
        if path in (None, ""):
            _no_path(out, op, value)
        elif not isinstance(path, str):
            raise invalid_path("path must be a string")
        else:
            _apply(out, op, parse_patch_path(path), value)
    return out


def _no_path(doc: dict[str, Any], op: str, value: Any) -> None:
    if op == "remove":
        raise ScimError("remove needs a path", scim_type="noTarget")
    if not isinstance(value, dict):
        raise invalid_value("an operation without a path needs an object value")
    for key, item in value.items():
        if key.lower() == "schemas":
            continue
        target = parse_patch_path(key)
        if not target.attr.names and isinstance(item, dict):
            # A whole extension object: each of its attributes is a path of its own.
            for sub, sub_value in item.items():
                _apply(doc, op, parse_patch_path(f"{key}:{sub}"), sub_value)
            continue
        _apply(doc, op, target, item)


def _container(doc: dict[str, Any], attr: AttrPath, *, create: bool) -> dict[str, Any] | None:
    """The object that holds the path's last name (created on the way when asked)."""
    current: Any = doc
    parents: tuple[str, ...] = ((attr.schema,) if attr.schema else ()) + attr.names[:-1]
    for name in parents:
        key, value = lookup(current, name)
        if not isinstance(value, dict):
            if not create:
                return None
            value = {}
            current[key or name] = value
        current = value
    return current if isinstance(current, dict) else None


def _apply(doc: dict[str, Any], op: str, target: PatchPath, value: Any) -> None:
    attr = target.attr
    if not attr.names:
        if op == "remove" or not isinstance(value, dict):
            key = lookup(doc, attr.schema or "")[0]
            if op == "remove" and key is not None:
                del doc[key]
                return
            raise invalid_path(f"{attr} names a schema, not an attribute")
        for sub, sub_value in value.items():
            _apply(doc, op, PatchPath(AttrPath(attr.schema, (sub,))), sub_value)
        return
    if attr.schema is None and attr.names[0].lower() in READ_ONLY:
        if op == "remove":
            raise ScimError(f"{attr} cannot be removed", scim_type="mutability")
        return  # clouds echo id/schemas back in partial resources: nothing to change
    if target.value_filter is not None:
        _apply_filtered(doc, op, target, value)
        return
    holder = _container(doc, attr, create=op != "remove")
    name = attr.names[-1]
    if holder is None:
        return
    key, current = lookup(holder, name)
    if op == "remove":
        if key is None:
            return
        if isinstance(current, list) and isinstance(value, list):
            gone = {_value_key(v) for v in value}
            holder[key] = [v for v in current if _value_key(v) not in gone]
        else:
            del holder[key]
        return
    if value is None:
        raise invalid_value(f"{op} of {attr} needs a value")
    key = key or name
    if op == "add" and isinstance(current, list):
        items = value if isinstance(value, list) else [value]
        known = {_value_key(v) for v in current}
        current.extend(v for v in items if _value_key(v) not in known)
    elif isinstance(current, dict) and isinstance(value, dict):
        current.update(value)
    else:
        holder[key] = value


def _value_key(value: Any) -> Any:
    if isinstance(value, dict):
        found = lookup(value, "value")[1]
        return found if found is not None else repr(sorted(value.items()))
    return value


def _apply_filtered(doc: dict[str, Any], op: str, target: PatchPath, value: Any) -> None:
    assert target.value_filter is not None
    holder = _container(doc, target.attr, create=op != "remove")
    if holder is None:
        return
    name = target.attr.names[-1]
    key, current = lookup(holder, name)
    items: list[Any] = current if isinstance(current, list) else []
    hits = [i for i in items if isinstance(i, dict) and matches(target.value_filter, i)]
    if op == "remove":
        if target.sub:
            for item in hits:
                sub_key = lookup(item, target.sub)[0]
                if sub_key is not None:
                    del item[sub_key]
        else:
            holder[key or name] = [i for i in items if not any(i is h for h in hits)]
        return
    if not hits:
        # Clouds add `emails[type eq "work"].value` for a value that does not exist yet.
        seed = _seed(target)
        items.append(seed)
        holder[key or name] = items
        hits = [seed]
    for item in hits:
        if target.sub:
            item[lookup(item, target.sub)[0] or target.sub] = value
        elif isinstance(value, dict):
            item.update(value)
        else:
            raise invalid_value(f"{target.attr}[...] needs an object value")


def _seed(target: PatchPath) -> dict[str, Any]:
    condition = target.value_filter
    if isinstance(condition, Compare) and condition.op == "eq" and len(condition.attr.names) == 1:
        return {condition.attr.names[0]: condition.value}
    raise ScimError(f"no value of {target.attr} matches the path's filter", scim_type="noTarget")

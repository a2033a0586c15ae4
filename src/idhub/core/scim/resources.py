"""SCIM resource documents: what a client sent, checked against the scim2-models shapes and
normalised; what idhub serves back (id, meta, ETag); and the idhub identity a user maps to."""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from idhub.core.identifiers import canonical_name
from idhub.core.scim.errors import invalid_syntax, invalid_value
from idhub.core.scim.filter import ENTERPRISE, lookup
from idhub.core.scim.ports import ScimRecord, UserColumns

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
_SERVER_OWNED = ("id", "meta")
_BOOLEANS = ("active", "primary")


@functools.cache
def shapes() -> tuple[Any, Any]:
    """The scim2-models shapes (full User with the enterprise extension, Group). Imported on
    the first SCIM document, not at start: scim2-models and pydantic under it are ~16 MB a
    server worker that is never provisioned by SCIM would otherwise carry."""
    from scim2_models import EnterpriseUser, Group, User

    return User[EnterpriseUser], Group


def _fix_booleans(value: Any) -> Any:
    """Booleans some clouds send as "True"/"False" strings, made real booleans."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key.lower() in _BOOLEANS and isinstance(item, str):
                if item.strip().lower() not in ("true", "false"):
                    raise invalid_value(f"{key} must be a boolean")
                item = item.strip().lower() == "true"
            out[key] = _fix_booleans(item)
        return out
    if isinstance(value, list):
        return [_fix_booleans(v) for v in value]
    return value


def _fix_manager(doc: dict[str, Any]) -> None:
    ext = lookup(doc, ENTERPRISE)[1]
    if isinstance(ext, dict):
        mkey, manager = lookup(ext, "manager")
        if isinstance(manager, str):
            # Entra ID sends the manager's id as a bare string.
            ext[mkey or "manager"] = {"value": manager} if manager else None
        if mkey and ext.get(mkey) is None:
            del ext[mkey]


# What the identity columns hold (adapters/db.py): longer values are refused, not cut.
_LIMITS = {"username": 200, "email": 320, "phone": 64, "employee_id": 64, "department": 190}


def _check_text(value: Any, where: str = "resource") -> None:
    """No database stores a NUL, and no attribute needs control characters."""
    if isinstance(value, str):
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise invalid_value(f"{where} must not contain control characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key), "an attribute name")
            _check_text(item, str(key)[:100])
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


def normalise(kind: str, payload: Any) -> dict[str, Any]:
    """The stored document for a resource a client sent (its id and meta dropped)."""
    if not isinstance(payload, dict):
        raise invalid_syntax("the request body must be a JSON object")
    _check_text(payload)
    doc = _fix_booleans({k: v for k, v in payload.items() if k.lower() not in _SERVER_OWNED})
    import pydantic  # loaded by `shapes()` already: this only names it here

    full_user, group = shapes()
    model: Any = full_user if kind == "User" else group
    if kind == "User":
        _fix_manager(doc)
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise invalid_value(f"{where or 'resource'}: {first.get('msg', 'invalid')}") from exc
    except (ValueError, TypeError) as exc:
        raise invalid_value(str(exc)[:200]) from exc
    out: dict[str, Any] = parsed.model_dump()
    # A password is never kept nor returned (RFC 7643 §4.1: `returned: never`); people a
    # source provisions sign in through their directory or an upstream provider.
    for owned in (*_SERVER_OWNED, "members", "password"):
        out.pop(owned, None)
    schemas = [GROUP_SCHEMA] if kind == "Group" else [USER_SCHEMA]
    if kind == "User" and out.get(ENTERPRISE):
        schemas.append(ENTERPRISE)
    out["schemas"] = schemas
    if kind == "User" and not str(out.get("userName") or "").strip():
        raise invalid_value("userName is required")
    if kind == "Group" and not str(out.get("displayName") or "").strip():
        raise invalid_value("displayName is required")
    return out


DISPLAYS = "_displays"  # in a group's stored document: member id -> the display the source sent


def members_of(payload: Any) -> tuple[list[str], dict[str, str]] | None:
    """The member ids a Group body names and the displays it gave them (None: no members)."""
    if not isinstance(payload, dict):
        return None
    members = lookup(payload, "members")[1]
    if members is None:
        return None
    if not isinstance(members, list):
        raise invalid_value("members must be a list")
    out = []
    displays: dict[str, str] = {}
    for member in members:
        value = lookup(member, "value")[1] if isinstance(member, dict) else None
        if not isinstance(value, str) or not value:
            raise invalid_value("each member needs a value (a user id)")
        out.append(value)
        display = lookup(member, "display")[1]
        if isinstance(display, str) and display:
            displays[value] = display[:200]
    return list(dict.fromkeys(out)), displays


def _primary(items: Any) -> str | None:
    if not isinstance(items, list) or not items:
        return None
    chosen = next((i for i in items if isinstance(i, dict) and i.get("primary")), items[0])
    value = chosen.get("value") if isinstance(chosen, dict) else None
    return str(value) if value else None


def user_columns(doc: dict[str, Any], *, deleted: bool = False) -> UserColumns:
    name = doc.get("name") or {}
    display = (
        doc.get("displayName")
        or name.get("formatted")
        or " ".join(p for p in (name.get("givenName"), name.get("familyName")) if p)
        or doc["userName"]
    )
    ext = doc.get(ENTERPRISE) or {}
    department = str(ext.get("department") or "").strip().strip("/")
    reason = "scim: deleted" if deleted else (None if doc.get("active", True) else "scim: inactive")
    columns = UserColumns(
        username=canonical_name(str(doc["userName"])),
        display_name=str(display)[:200],
        email=_primary(doc.get("emails")),
        phone=_primary(doc.get("phoneNumbers")),
        employee_id=ext.get("employeeNumber") or None,
        department=f"/{department}" if department else None,
        disabled_reason=reason,
    )
    for field_name, limit in _LIMITS.items():
        value = getattr(columns, field_name)
        if value is not None and len(value) > limit:
            raise invalid_value(f"{field_name} is longer than {limit} characters")
    return columns


def version(doc: dict[str, Any], members: tuple[str, ...] = ()) -> str:
    """A weak ETag over the content: equal documents have equal versions on every replica."""
    raw = json.dumps([doc, sorted(members)], sort_keys=True, separators=(",", ":"))
    return 'W/"' + hashlib.sha256(raw.encode()).hexdigest()[:20] + '"'


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def render(kind: str, record: ScimRecord, *, base: str, displays: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": record.scim_id, **record.doc}
    if kind == "Group":
        displays = {**displays, **(out.pop(DISPLAYS, None) or {})}
        out["members"] = [
            {
                "value": m,
                "type": "User",
                "$ref": f"{base}/Users/{m}",
                **({"display": displays[m]} if displays.get(m) else {}),
            }
            for m in record.members
        ]
        if not out["members"]:
            del out["members"]
    out["meta"] = {
        "resourceType": kind,
        "created": _when(record.created),
        "lastModified": _when(record.updated),
        "location": f"{base}/{kind}s/{record.scim_id}",
        "version": version(record.doc, record.members),
    }
    return out

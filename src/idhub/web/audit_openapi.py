"""The audit API's part of the OpenAPI document (`GET /api/v1/audit`, see `web/audit_api.py`).

The parameter schemas say what the handler really accepts, so that a request the document
calls invalid is one the API refuses: the fuzz tests generate such requests from the served
document and expect a 4xx for every one of them.
"""

from __future__ import annotations

from typing import Any

from idhub.core.audit import OUTCOMES
from idhub.core.authz.audit_access import READ_SCOPE
from idhub.web.audit_api import DEFAULT_LIMIT, MAX_LIMIT, MAX_VALUE

# Every value is printable text of at most MAX_VALUE characters; an empty value is the same
# as leaving the parameter out (except `order` and `limit`, which must be spelled right).
_TEXT: dict[str, Any] = {"type": "string", "maxLength": MAX_VALUE}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {**_TEXT, **schema},
        "description": description,
    }


_PARAMETERS = [
    _query(
        "type",
        # Names are lower-case ASCII with dots and underscores; commas separate several.
        {"pattern": r"^[a-z_.*, ]*$", "example": "login.*"},
        "event types, comma-separated and/or repeated; `prefix.*` takes a whole family; "
        "a name that is no event type is a 400",
    ),
    _query("actor", {}, "`type:id` (`user:alice`, `client:oa`) or just the id"),
    _query("target", {}, "the event's target, exactly"),
    _query("outcome", {"enum": [*OUTCOMES, ""]}, "one outcome"),
    _query(
        "since",
        {"example": "2026-01-15T08:00:00Z"},
        "ISO 8601 date or date-time (UTC unless it says otherwise), epoch seconds, or an "
        "age such as `15m`, `7d`; within ±2^53 seconds",
    ),
    _query("until", {"example": "7d"}, "as `since`"),
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "description": "events per page",
    },
    _query(
        "cursor",
        {"pattern": r"^[A-Za-z0-9_-]*$"},
        "`next_cursor` of the previous page, as returned (it also fixes the order)",
    ),
    {
        "name": "order",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
        "description": "`desc`: newest first",
    },
]

AUDIT_PATHS: dict[str, Any] = {
    "/api/v1/audit": {
        "get": {
            "summary": "Search the audit trail, one page at a time",
            "description": f"Needs an idhub access token with scope `{READ_SCOPE}` whose "
            "holder may read the trail: a user granted `idhub` / `audit_event` / `read` "
            "by idhub's policy, or a client listed in `[server] admin_clients`. A parameter "
            "this API does not know is a 400.",
            "parameters": _PARAMETERS,
            "responses": {
                "200": {
                    "description": "a page of events, newest first unless `order=asc`",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/AuditPage"}}
                    },
                },
                "400": {"$ref": "#/components/responses/BadRequest"},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "403": {"$ref": "#/components/responses/Forbidden"},
                "414": {"$ref": "#/components/responses/TargetTooLong"},
                "431": {"$ref": "#/components/responses/HeadTooLarge"},
                "503": {"$ref": "#/components/responses/Unavailable"},
            },
        }
    }
}

AUDIT_SCHEMAS: dict[str, Any] = {
    "AuditEvent": {
        "type": "object",
        "required": ["seq", "ts", "event_type", "outcome", "hash"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "ts": {"type": "number"},
            "time": {"type": "string"},
            "event_type": {"type": "string"},
            "actor_type": {"type": ["string", "null"]},
            "actor_id": {"type": ["string", "null"]},
            "target": {"type": ["string", "null"]},
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "client_ip": {"type": ["string", "null"]},
            "user_agent": {"type": ["string", "null"]},
            "request_id": {"type": ["string", "null"]},
            "details": {"type": "object"},
            "prev_hash": {"type": ["string", "null"]},
            "hash": {"type": "string"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {
                "type": "array",
                "maxItems": MAX_LIMIT,
                "items": {"$ref": "#/components/schemas/AuditEvent"},
            },
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
        },
    },
}

"""Reading the audit table: the columns in chain order, rows as events, and the filters
`search`, `export` and the API share (every filter narrows; `type` takes `prefix.*`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, or_

from idhub.adapters.db import audit_events
from idhub.core.audit import ACTOR_TYPES, OUTCOMES, AuditEvent, AuditFilter
from idhub.errors import InvalidInput

COLUMNS = (
    "seq", "ts", "event_type", "actor_type", "actor_id", "target", "outcome", "client_ip",
    "user_agent", "request_id", "details", "prev_hash", "hash",
)  # fmt: skip


def columns() -> list[Any]:
    return [audit_events.c[name] for name in COLUMNS]


def row_event(row: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        seq=int(row[0]), ts=float(row[1]), event_type=row[2], actor_type=row[3],
        actor_id=row[4], target=row[5], outcome=row[6], client_ip=row[7], user_agent=row[8],
        request_id=row[9], details=json.loads(row[10]), prev_hash=row[11], hash=row[12],
    )  # fmt: skip


def filtered(query: Select[Any], where: AuditFilter) -> Select[Any]:
    c = audit_events.c
    conditions: list[Any] = []
    if where.event_types:
        exact = [t for t in where.event_types if not t.endswith(".*")]
        prefixes = [t[:-1] for t in where.event_types if t.endswith(".*")]
        options: list[Any] = [c.event_type.in_(exact)] if exact else []
        options += [c.event_type.startswith(p, autoescape=True) for p in prefixes]
        conditions.append(or_(*options))
    if where.actor:
        kind, sep, ident = where.actor.partition(":")
        if sep and kind in ACTOR_TYPES:
            conditions.append(and_(c.actor_type == kind, c.actor_id == ident))
        elif where.actor in ACTOR_TYPES:
            conditions.append(c.actor_type == where.actor)
        else:
            conditions.append(c.actor_id == where.actor)
    if where.target:
        conditions.append(c.target == where.target)
    if where.outcome:
        if where.outcome not in OUTCOMES:
            raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}")
        conditions.append(c.outcome == where.outcome)
    if where.since is not None:
        conditions.append(c.ts >= where.since)
    if where.until is not None:
        conditions.append(c.ts < where.until)
    return query.where(*conditions) if conditions else query

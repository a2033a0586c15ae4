"""The hash-chained audit table. Appends are serialised (SQLite: the write lock taken by
BEGIN IMMEDIATE semantics of a single writer; PostgreSQL: a transaction-scoped advisory lock)
so concurrent replicas still produce one unbroken chain.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters.db import audit_anchor, audit_events
from idhub.core.audit import GENESIS_HASH, Actor, AuditEvent, EventType, Outcome, RequestContext
from idhub.core.clock import Clock
from idhub.errors import AuditError

_ADVISORY_LOCK_KEY = 0x1D4B_A0D1


class SqlAuditLog:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._pg = engine.dialect.name == "postgresql"

    def record(
        self,
        event_type: EventType,
        *,
        actor: Actor,
        target: str | None = None,
        outcome: Outcome = "success",
        details: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> None:
        ctx = ctx or RequestContext()
        try:
            with self._engine.begin() as conn:
                if self._pg:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                else:
                    # Takes SQLite's write lock now, so the read of the tail and the insert
                    # cannot interleave with another writer.
                    conn.execute(text("UPDATE audit_anchor SET id = id WHERE 0"))
                last = conn.execute(
                    select(audit_events.c.seq, audit_events.c.hash)
                    .order_by(audit_events.c.seq.desc())
                    .limit(1)
                ).first()
                if last is None:
                    anchor = conn.execute(
                        select(audit_anchor.c.first_seq, audit_anchor.c.prev_hash)
                    ).first()
                    seq, prev = (anchor[0], anchor[1]) if anchor else (1, GENESIS_HASH)
                else:
                    seq, prev = last[0] + 1, last[1]
                event = AuditEvent(
                    seq=seq,
                    ts=self._clock.now(),
                    event_type=str(event_type),
                    actor_type=actor.type,
                    actor_id=actor.id,
                    target=target,
                    outcome=outcome,
                    client_ip=ctx.client_ip,
                    user_agent=ctx.user_agent,
                    request_id=ctx.request_id,
                    details=details or {},
                    prev_hash=prev,
                )
                row = {
                    **{k: getattr(event, k) for k in _COLUMNS},
                    "details": json.dumps(event.details, sort_keys=True, ensure_ascii=False),
                    "hash": event.compute_hash(),
                }
                conn.execute(audit_events.insert().values(**row))
        except SQLAlchemyError as exc:
            raise AuditError(f"audit event {event_type} could not be written: {exc}") from exc


_COLUMNS = (
    "seq",
    "ts",
    "event_type",
    "actor_type",
    "actor_id",
    "target",
    "outcome",
    "client_ip",
    "user_agent",
    "request_id",
    "prev_hash",
)

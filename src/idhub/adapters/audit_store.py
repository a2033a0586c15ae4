"""The hash-chained audit table. Appends are serialised (SQLite: the database write lock,
taken before the chain tail is read; PostgreSQL: a transaction-scoped advisory lock) so
concurrent replicas still produce one unbroken chain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters.db import audit_anchor, audit_events
from idhub.core.audit import (
    GENESIS_HASH,
    Actor,
    AuditEvent,
    EventType,
    Outcome,
    PendingEvent,
    RequestContext,
)
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
        self.record_many(
            [PendingEvent(event_type, actor, target, outcome, details or {}, ctx)]
        )

    def record_many(self, events: Sequence[PendingEvent]) -> None:
        if not events:
            return
        try:
            with self._engine.begin() as conn:
                seq, prev = self._lock_tail(conn)
                now = self._clock.now()
                rows = []
                for pending in events:
                    ctx = pending.ctx or RequestContext()
                    event = AuditEvent(
                        seq=seq,
                        ts=now,
                        event_type=str(pending.event_type),
                        actor_type=pending.actor.type,
                        actor_id=pending.actor.id,
                        target=pending.target,
                        outcome=pending.outcome,
                        client_ip=ctx.client_ip,
                        user_agent=ctx.user_agent,
                        request_id=ctx.request_id,
                        details=pending.details,
                        prev_hash=prev,
                    )
                    digest = event.compute_hash()
                    rows.append(
                        {
                            **{k: getattr(event, k) for k in _COLUMNS},
                            "details": json.dumps(event.details, sort_keys=True, ensure_ascii=False),
                            "hash": digest,
                        }
                    )
                    seq, prev = seq + 1, digest
                conn.execute(audit_events.insert(), rows)
        except SQLAlchemyError as exc:
            kinds = sorted({str(e.event_type) for e in events})
            raise AuditError(f"audit events {', '.join(kinds)} could not be written: {exc}") from exc

    def _lock_tail(self, conn: Connection) -> tuple[int, str]:
        """Takes the append lock and returns (next seq, previous hash)."""
        if self._pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
        else:
            # A write statement makes SQLite take its write lock now, so reading the tail and
            # inserting cannot interleave with another writer.
            conn.execute(text("UPDATE audit_anchor SET id = id WHERE 0"))
        last = conn.execute(
            select(audit_events.c.seq, audit_events.c.hash)
            .order_by(audit_events.c.seq.desc())
            .limit(1)
        ).first()
        if last is not None:
            return int(last[0]) + 1, str(last[1])
        anchor = conn.execute(select(audit_anchor.c.first_seq, audit_anchor.c.prev_hash)).first()
        if anchor is not None:
            return int(anchor[0]), str(anchor[1])
        return 1, GENESIS_HASH


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

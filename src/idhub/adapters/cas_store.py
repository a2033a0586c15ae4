"""CAS services and tickets in the database, so every replica validates what another issued."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.db import cas_services, cas_tickets, sso_sessions, users
from idhub.adapters.group_commit import GroupCommit
from idhub.adapters.identity_store import _to_user, _user_query
from idhub.adapters.session_store import _to_session
from idhub.adapters.unit_of_work import begin, connect, open_unit, serial_lock, writer_serial
from idhub.core.audit import PendingEvent
from idhub.core.cas import CasService, Redeemed, TicketKind, TicketRecord
from idhub.core.identity import User
from idhub.core.sessions import SsoSession
from idhub.errors import Conflict


def _to_service(row: Row[Any]) -> CasService:
    m = row._mapping
    return CasService(
        name=m["name"],
        urls=tuple(m["urls"] or ()),
        domain=m["domain"],
        display_name=m["display_name"] or "",
        attributes=tuple(m["attributes"] or ()),
        first_party=bool(m["first_party"]),
        proxy_callbacks=tuple(m["proxy_callbacks"] or ()),
        single_logout=bool(m["single_logout"]),
        created_at=m["created_at"],
        require_mfa=bool(m["require_mfa"]),
    )


@storage_boundary
class SqlCasServiceStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def all(self) -> list[CasService]:
        with connect(self._engine) as conn:
            rows = conn.execute(select(cas_services).order_by(cas_services.c.name)).all()
        return [_to_service(r) for r in rows]

    def get(self, name: str) -> CasService | None:
        with connect(self._engine) as conn:
            row = conn.execute(select(cas_services).where(cas_services.c.name == name)).first()
        return None if row is None else _to_service(row)

    def insert(self, service: CasService) -> None:
        try:
            with begin(self._engine) as conn:
                conn.execute(
                    insert(cas_services).values(
                        name=service.name,
                        display_name=service.display_name,
                        urls=list(service.urls),
                        domain=service.domain,
                        attributes=list(service.attributes),
                        first_party=service.first_party,
                        proxy_callbacks=list(service.proxy_callbacks),
                        single_logout=service.single_logout,
                        created_at=service.created_at,
                        require_mfa=service.require_mfa,
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"a CAS service named {service.name!r} exists already") from exc

    def delete(self, name: str) -> bool:
        with begin(self._engine) as conn:
            return bool(
                conn.execute(delete(cas_services).where(cas_services.c.name == name)).rowcount
            )


def _to_ticket(row: Row[Any]) -> TicketRecord:
    m = row._mapping
    return TicketRecord(
        ticket_hash=m["ticket_hash"],
        kind=TicketKind(m["kind"]),
        service_name=m["service_name"],
        service_url=m["service_url"],
        sid=m["sid"],
        user_id=m["user_id"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        consumed_at=m["consumed_at"],
        from_new_login=bool(m["from_new_login"]),
        parent_hash=m["parent_hash"],
        proxies=tuple(m["proxies"] or ()),
        sealed=m["sealed"],
    )


# Built once: validation is the hot path and building the statement costs more than running it.
_CONSUME = (
    update(cas_tickets)
    .where(
        cas_tickets.c.ticket_hash == bindparam("hash"),
        cas_tickets.c.consumed_at.is_(None),
        # Not `IN (...)`: an expanding parameter is re-rendered on every execution.
        or_(
            cas_tickets.c.kind == TicketKind.SERVICE.value,
            cas_tickets.c.kind == TicketKind.PROXY.value,
        ),
    )
    .values(consumed_at=bindparam("now"))
    .returning(*cas_tickets.c)
)
# A batch of validations: every ticket in one UPDATE, then their people and sessions.
_CONSUME_MANY = (
    update(cas_tickets)
    .where(
        cas_tickets.c.ticket_hash.in_(bindparam("hashes", expanding=True)),
        cas_tickets.c.consumed_at.is_(None),
        or_(
            cas_tickets.c.kind == TicketKind.SERVICE.value,
            cas_tickets.c.kind == TicketKind.PROXY.value,
        ),
    )
    .values(consumed_at=bindparam("now"))
    .returning(*cas_tickets.c)
)
_HOLDERS = _user_query().where(users.c.id.in_(bindparam("ids", expanding=True)))
_SESSIONS = select(sso_sessions).where(sso_sessions.c.sid.in_(bindparam("sids", expanding=True)))
_GET = select(cas_tickets).where(cas_tickets.c.ticket_hash == bindparam("hash"))
# The person and (when it is theirs) the session a ticket was issued under, in one statement.
_HOLDER = (
    _user_query()
    .add_columns(*(c.label(f"session_{c.name}") for c in sso_sessions.c))
    .outerjoin(
        sso_sessions,
        and_(sso_sessions.c.sid == bindparam("sid"), sso_sessions.c.user_id == users.c.id),
    )
    .where(users.c.id == bindparam("user_id"))
)


def _holder_session(row: Row[Any]) -> SsoSession | None:
    m = row._mapping
    if m["session_sid"] is None:
        return None
    return SsoSession(
        sid=m["session_sid"],
        user_id=m["session_user_id"],
        auth_time=m["session_auth_time"],
        amr=tuple(m["session_amr"] or ()),
        acr=m["session_acr"],
        created_at=m["session_created_at"],
        last_seen_at=m["session_last_seen_at"],
        expires_at=m["session_expires_at"],
        ended_at=m["session_ended_at"],
        end_reason=m["session_end_reason"],
        ip=m["session_ip"],
        user_agent=m["session_user_agent"],
    )


@dataclass(frozen=True)
class _Consume:
    ticket_hash: str
    now: float
    audit: Callable[[Redeemed | None], Sequence[PendingEvent]]


@storage_boundary
class SqlCasTicketStore:
    def __init__(self, engine: Engine, audit: SqlAuditLog | None = None) -> None:
        self._engine = engine
        # Appends a validation's audit event inside its consuming transaction.
        self._audit = audit
        # SQLite has one writer at a time and makes a waiting one sleep 1, 2, 5, 10 ... ms
        # between tries: this process's writers (units of work included) queue on one lock
        # instead (`writer_serial`). PostgreSQL locks the ticket's row.
        # Validations with their audit event are group-committed: on SQLite they queue on the
        # write lock anyway, on PostgreSQL on the audit chain's append lock, held to COMMIT.
        leader = serial_lock(engine) if engine.dialect.name == "sqlite" else threading.Lock()
        self._group: GroupCommit[_Consume, Redeemed | None] = GroupCommit(
            self._consume_batch, leader=leader
        )

    def insert(self, record: TicketRecord) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(cas_tickets).values(
                    ticket_hash=record.ticket_hash,
                    kind=record.kind.value,
                    service_name=record.service_name,
                    service_url=record.service_url,
                    sid=record.sid,
                    user_id=record.user_id,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    consumed_at=record.consumed_at,
                    from_new_login=record.from_new_login,
                    parent_hash=record.parent_hash,
                    proxies=list(record.proxies),
                    sealed=record.sealed,
                )
            )

    def consume(
        self,
        ticket_hash: str,
        now: float,
        *,
        audit: Callable[[Redeemed | None], Sequence[PendingEvent]] | None = None,
    ) -> Redeemed | None:
        # One UPDATE ... RETURNING: of two replicas validating the same ticket, one wins. The
        # session and the person are read in the same transaction, as they are at this moment,
        # and the validation's audit event is appended in it too.
        if audit is None:
            with writer_serial(self._engine), begin(self._engine) as conn:
                return self._consume_in(conn, ticket_hash, now)
        outcome = self.consume_many([(ticket_hash, now, audit)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def consume_many(
        self,
        items: Sequence[tuple[str, float, Callable[[Redeemed | None], Sequence[PendingEvent]]]],
    ) -> list[Redeemed | Exception | None]:
        if self._audit is None:
            raise RuntimeError("this ticket store was built without the audit log")
        if open_unit(self._engine) is not None:
            # Inside a caller's unit of work: its transaction, its commit, its audit append.
            found: list[Redeemed | Exception | None] = []
            with begin(self._engine) as conn:
                for ticket_hash, now, audit in items:
                    redeemed = self._consume_in(conn, ticket_hash, now)
                    self._audit.record_many(audit(redeemed))
                    found.append(redeemed)
            return found
        return self._group.run_many([_Consume(*item) for item in items])

    def _consume_batch(self, batch: Sequence[_Consume]) -> list[Redeemed | None]:
        """The group committer's one transaction for every consume waiting: each ticket spent
        and checked on what this transaction read, all their audit events appended at its end,
        one COMMIT (and one turn of the database's write lock or audit advisory lock) for all."""
        assert self._audit is not None
        appended = None
        with begin(self._engine) as conn:
            redeemed = self._consume_all(conn, batch)
            events: list[PendingEvent] = []
            for item, found in zip(batch, redeemed, strict=True):
                events.extend(item.audit(found))
            if events:
                appended = self._audit.record_in(conn, events)
        if appended is not None:
            appended.committed()
        self._audit.notify_listeners()
        return redeemed

    @staticmethod
    def _consume_all(conn: Connection, batch: Sequence[_Consume]) -> list[Redeemed | None]:
        """`_consume_in` for a batch in three statements whatever its size (per item, two
        statements cost ~0.2 ms of Python on SQLite and a round trip each on PostgreSQL). A
        ticket named twice in one batch is spent by the first; the rest find it used."""
        hashes = list(dict.fromkeys(item.ticket_hash for item in batch))
        now = max(item.now for item in batch)
        rows = conn.execute(_CONSUME_MANY, {"hashes": hashes, "now": now}).all()
        spent = {r._mapping["ticket_hash"]: _to_ticket(r) for r in rows}
        people: dict[int, User] = {}
        sessions: dict[str, SsoSession] = {}
        if spent:
            ids = sorted({r.user_id for r in spent.values()})
            people = {u.id: u for u in map(_to_user, conn.execute(_HOLDERS, {"ids": ids}))}
            sids = sorted({r.sid for r in spent.values() if r.sid})
            if sids:
                found = conn.execute(_SESSIONS, {"sids": sids})
                sessions = {s.sid: s for s in map(_to_session, found)}
        out: list[Redeemed | None] = []
        for item in batch:
            record = spent.pop(item.ticket_hash, None)
            if record is None:
                out.append(None)
                continue
            user = people.get(record.user_id)
            session = sessions.get(record.sid) if record.sid else None
            # Only the ticket holder's own session counts (as the join in `_HOLDER` says).
            if user is None or (session is not None and session.user_id != user.id):
                session = None
            out.append(Redeemed(record, session, user))
        return out

    @staticmethod
    def _consume_in(conn: Connection, ticket_hash: str, now: float) -> Redeemed | None:
        row = conn.execute(_CONSUME, {"hash": ticket_hash, "now": now}).first()
        if row is None:
            return None
        record = _to_ticket(row)
        holder = conn.execute(_HOLDER, {"sid": record.sid, "user_id": record.user_id}).first()
        if holder is None:
            return Redeemed(record, None, None)
        return Redeemed(record, _holder_session(holder), _to_user(holder))

    def get(self, ticket_hash: str) -> TicketRecord | None:
        with connect(self._engine) as conn:
            row = conn.execute(_GET, {"hash": ticket_hash}).first()
        return None if row is None else _to_ticket(row)

    def for_session(self, sid: str, service_name: str) -> list[TicketRecord]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(cas_tickets)
                .where(
                    cas_tickets.c.sid == sid,
                    cas_tickets.c.service_name == service_name,
                    cas_tickets.c.kind == TicketKind.SERVICE.value,
                )
                .order_by(cas_tickets.c.created_at)
            ).all()
        return [_to_ticket(r) for r in rows]

    def purge(self, *, created_before: float, expired_before: float) -> int:
        spent = and_(
            cas_tickets.c.kind != TicketKind.SERVICE.value,
            cas_tickets.c.expires_at < expired_before,
        )
        with begin(self._engine) as conn:
            return int(
                conn.execute(
                    delete(cas_tickets).where(or_(cas_tickets.c.created_at < created_before, spent))
                ).rowcount
            )

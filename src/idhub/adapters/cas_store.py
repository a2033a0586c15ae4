"""CAS services and tickets in the database, so every replica validates what another issued."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import cas_services, cas_tickets
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.cas import CasService, TicketKind, TicketRecord
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
        cas_tickets.c.kind.in_((TicketKind.SERVICE.value, TicketKind.PROXY.value)),
    )
    .values(consumed_at=bindparam("now"))
    .returning(*cas_tickets.c)
)
_GET = select(cas_tickets).where(cas_tickets.c.ticket_hash == bindparam("hash"))


@storage_boundary
class SqlCasTicketStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

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

    def consume(self, ticket_hash: str, now: float) -> TicketRecord | None:
        # One UPDATE ... RETURNING: of two replicas validating the same ticket, one wins.
        with begin(self._engine) as conn:
            row = conn.execute(_CONSUME, {"hash": ticket_hash, "now": now}).first()
        return None if row is None else _to_ticket(row)

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

    def purge(self, before: float) -> int:
        with begin(self._engine) as conn:
            return int(
                conn.execute(delete(cas_tickets).where(cas_tickets.c.created_at < before)).rowcount
            )

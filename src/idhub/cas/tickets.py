"""CAS tickets: service (`ST-`), proxy (`PT-`) and proxy-granting (`PGT-`) tickets.

Every ticket is 160 or more random bits behind its prefix (an ST or PT stays within the 32
characters every CAS client must accept). The store keeps only its SHA-256, so a copy of the
database cannot be replayed; a service ticket is also kept encrypted, because the single-logout
request must name it to the service. Service and proxy tickets are single use: the first
validation attempt consumes the ticket whatever its outcome (CAS 3.0 §3.1.2, §3.2.2), and the
store makes that atomic across replicas. A proxy-granting ticket lives as long as the SSO session
it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from idhub.core.audit import PendingEvent
from idhub.core.cas import Redeemed, TicketKind, TicketRecord, TicketStore
from idhub.core.crypto import Sealer, new_token, sha256_hex
from idhub.errors import ConfigError

__all__ = ["CasTickets", "Redeemed", "TicketKind", "TicketRecord", "TicketStore", "ticket_kind"]

MAX_TICKET = 256


# Random bytes per kind: 20 bytes is 27 characters, "ST-" + 27 fits the 32 clients must take.
_BYTES = {TicketKind.SERVICE: 20, TicketKind.PROXY: 20, TicketKind.PROXY_GRANTING: 32}


def ticket_kind(ticket: str) -> TicketKind | None:
    """The kind a ticket's prefix names, or None when it is not a ticket idhub issues."""
    if not ticket or len(ticket) > MAX_TICKET or not ticket.isascii():
        return None
    prefix, _, rest = ticket.partition("-")
    if not rest:
        return None
    try:
        return TicketKind(prefix)
    except ValueError:
        return None


class CasTickets:
    """Issues and redeems tickets (the CAS server's only access to the ticket store)."""

    def __init__(
        self,
        store: TicketStore,
        sealer: Sealer,
        *,
        ttl: float,
        keep_for: float,
    ) -> None:
        if ttl <= 0:
            raise ConfigError("[cas] ticket_ttl must be a positive number of seconds")
        self._store = store
        self._sealer = sealer
        self._ttl = ttl
        # How long a service ticket's record stays for single logout (the session lifetime).
        self._keep_for = keep_for

    @property
    def ttl(self) -> float:
        return self._ttl

    def issue(
        self,
        kind: TicketKind,
        *,
        service_name: str,
        service_url: str,
        sid: str | None,
        user_id: int,
        now: float,
        expires_at: float | None = None,
        from_new_login: bool = False,
        parent_hash: str | None = None,
        proxies: Sequence[str] = (),
    ) -> str:
        ticket = f"{kind.value}-{new_token(_BYTES[kind])}"
        ticket_hash = sha256_hex(ticket)
        sealed = None
        if kind is TicketKind.SERVICE:
            sealed = self._sealer.seal(ticket.encode("ascii"), ticket_hash.encode("ascii"))
        self._store.insert(
            TicketRecord(
                ticket_hash=ticket_hash,
                kind=kind,
                service_name=service_name,
                service_url=service_url,
                sid=sid,
                user_id=user_id,
                created_at=now,
                expires_at=expires_at if expires_at is not None else now + self._ttl,
                from_new_login=from_new_login,
                parent_hash=parent_hash,
                proxies=tuple(proxies),
                sealed=sealed,
            )
        )
        return ticket

    def redeem(
        self,
        ticket: str,
        now: float,
        *,
        audit: Callable[[Redeemed | None], Sequence[PendingEvent]] | None = None,
    ) -> Redeemed | None:
        """Consumes a service or proxy ticket; the record (with its session and person) if it
        existed unused and unexpired. `audit`, given what was found, returns the events to
        record in the consuming transaction (see `TicketStore.consume`)."""

        def live(redeemed: Redeemed | None) -> Redeemed | None:
            return None if redeemed is None or redeemed.record.expires_at <= now else redeemed

        inner = None if audit is None else (lambda found: audit(live(found)))
        return live(self._store.consume(sha256_hex(ticket), now, audit=inner))

    def redeem_many(
        self,
        items: Sequence[tuple[str, Callable[[Redeemed | None], Sequence[PendingEvent]]]],
        now: float,
    ) -> list[Redeemed | Exception | None]:
        """`redeem(ticket, now, audit=audit)` for each (ticket, audit), in one transaction
        where the store can; an item's error is its outcome (see `TicketStore.consume_many`)."""

        def live(redeemed: Redeemed | None) -> Redeemed | None:
            return None if redeemed is None or redeemed.record.expires_at <= now else redeemed

        def checked(
            audit: Callable[[Redeemed | None], Sequence[PendingEvent]],
        ) -> Callable[[Redeemed | None], Sequence[PendingEvent]]:
            return lambda found: audit(live(found))

        found = self._store.consume_many(
            [(sha256_hex(ticket), now, checked(audit)) for ticket, audit in items]
        )
        return [r if isinstance(r, Exception) else live(r) for r in found]

    def granting(self, ticket: str, now: float) -> TicketRecord | None:
        """A live proxy-granting ticket's record (not consumed: it grants many proxy tickets)."""
        record = self._store.get(sha256_hex(ticket))
        if record is None or record.kind is not TicketKind.PROXY_GRANTING:
            return None
        return record if record.expires_at > now else None

    def for_session(self, sid: str, service_name: str) -> list[TicketRecord]:
        return self._store.for_session(sid, service_name)

    def get(self, ticket_hash: str) -> TicketRecord | None:
        return self._store.get(ticket_hash)

    def reveal(self, record: TicketRecord) -> str:
        """The service ticket itself, for the single-logout request that must name it."""
        if record.sealed is None:
            raise ValueError("only service tickets are kept for single logout")
        return self._sealer.open(record.sealed, record.ticket_hash.encode("ascii")).decode("ascii")

    def purge_once(self, now: float) -> int:
        """The `cas-housekeeping` job: removes tickets that can no longer matter. A service
        ticket stays (encrypted) while the session it was issued in may live, because that
        session's single-logout request names it; a spent proxy ticket and an expired
        proxy-granting ticket serve nothing. Several replicas doing it at once is harmless."""
        return self._store.purge(created_before=now - self._keep_for, expired_before=now)

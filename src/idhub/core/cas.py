"""What the CAS server front (`idhub.cas`) keeps: registered services and tickets, and the
ports they are stored through (`adapters/cas_store.py` implements them). The rules that use
them live in `idhub.cas`."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.core.audit import PendingEvent
from idhub.core.identity import User
from idhub.core.sessions import SsoSession

# What a service may be given about a person (protocol 3.0 `cas:attributes`).
ATTRIBUTES = ("username", "name", "email", "employeeNumber", "department", "groups", "roles")


@dataclass(frozen=True)
class CasService:
    """A system that signs in through CAS. Its `name` is its id in sessions, consent and the
    audit trail; `domain` is the policy domain its roles come from."""

    name: str
    urls: tuple[str, ...]
    domain: str
    display_name: str = ""
    attributes: tuple[str, ...] = ATTRIBUTES
    first_party: bool = False
    # pgtUrl patterns this service may ask proxy-granting tickets for; empty: no proxying.
    proxy_callbacks: tuple[str, ...] = ()
    single_logout: bool = True
    created_at: float = 0.0
    # A second factor for everyone signing in to it, like an OIDC client's `require_mfa`.
    require_mfa: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "urls": list(self.urls),
            "domain": self.domain,
            "attributes": list(self.attributes),
            "first_party": self.first_party,
            "proxy_callbacks": list(self.proxy_callbacks),
            "single_logout": self.single_logout,
            "require_mfa": self.require_mfa,
            "created_at": self.created_at,
        }


class ServiceStore(Protocol):
    def all(self) -> list[CasService]: ...
    def get(self, name: str) -> CasService | None: ...
    def insert(self, service: CasService) -> None: ...
    def delete(self, name: str) -> bool: ...


class TicketKind(enum.StrEnum):
    SERVICE = "ST"
    PROXY = "PT"
    PROXY_GRANTING = "PGT"


@dataclass(frozen=True)
class TicketRecord:
    ticket_hash: str
    kind: TicketKind
    service_name: str
    service_url: str
    sid: str | None
    user_id: int
    created_at: float
    expires_at: float
    consumed_at: float | None = None
    from_new_login: bool = False
    parent_hash: str | None = None
    # Proxy callback URLs this ticket passed through, most recent first (CAS `cas:proxies`).
    proxies: tuple[str, ...] = ()
    sealed: bytes | None = None


@dataclass(frozen=True)
class Redeemed:
    """A ticket just consumed, with the SSO session (without its participants) and the person
    it was issued under as they are now, all read in the consuming transaction: validation is
    the hot path, and one connection with three statements costs a third of three lookups."""

    record: TicketRecord
    session: SsoSession | None
    user: User | None


# Given what a consume found, the audit events to record in the consuming transaction.
AuditFor = Callable[[Redeemed | None], Sequence[PendingEvent]]


class TicketStore(Protocol):
    def insert(self, record: TicketRecord) -> None: ...
    def consume(
        self,
        ticket_hash: str,
        now: float,
        *,
        audit: Callable[[Redeemed | None], Sequence[PendingEvent]] | None = None,
    ) -> Redeemed | None:
        """Marks the ticket used and returns it as it was; None when unknown or used before.
        Of two concurrent calls only one gets the record. `audit` is called inside the
        consuming transaction with what it found; the events it returns join the audit chain
        in that same transaction, so the ticket is spent and its validation recorded
        together or not at all (one write transaction per validation instead of two)."""
        ...

    def consume_many(
        self,
        items: Sequence[tuple[str, float, Callable[[Redeemed | None], Sequence[PendingEvent]]]],
    ) -> list[Redeemed | Exception | None]:
        """`consume(hash, now, audit=audit)` for each item, in one transaction where the store
        can (a validation burst: one COMMIT for all); one outcome per item, in order: what
        `consume` would return, or the error it would raise (nothing of that item was kept)."""
        ...

    def get(self, ticket_hash: str) -> TicketRecord | None: ...
    def for_session(self, sid: str, service_name: str) -> list[TicketRecord]:
        """The service tickets issued to `service_name` under session `sid`."""
        ...

    def purge(self, *, created_before: float, expired_before: float) -> int:
        """Deletes every ticket issued before `created_before`, and every proxy and
        proxy-granting ticket expired before `expired_before`; returns how many."""
        ...

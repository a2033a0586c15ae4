"""Consent: whether a person must approve what a system asks for, and the record of their answer.

Every protocol front asks the same question here ("may this system have these scopes or
attributes of this person without asking?"), so OIDC, CAS and SAML share one remembered answer
per person and system. Systems registered as first-party belong to the company itself and are
not asked about; a remembered grant covers a later request only when it covers every scope of it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import Protocol

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.identity import User
from idhub.core.transactions import UnitOfWork


class ConsentStore(Protocol):
    def granted_scopes(self, user_id: int, client_id: str) -> set[str]: ...
    def grant(self, user_id: int, client_id: str, scopes: Sequence[str], now: float) -> None: ...


class ConsentNeed(enum.Enum):
    """The answer to "must the person be asked?"."""

    FIRST_PARTY = "first_party"  # the company's own system: never asked
    REMEMBERED = "remembered"  # an earlier grant covers every scope asked for
    ASK = "ask"


class Consents:
    """`services.consents`: decides whether to ask, and records what the person answered."""

    def __init__(
        self, store: ConsentStore, audit: Auditor, clock: Clock, *, uow: UnitOfWork
    ) -> None:
        self._uow = uow
        self._store = store
        self._audit = audit
        self._clock = clock

    def need(
        self,
        user: User,
        *,
        client_id: str,
        first_party: bool,
        scopes: Collection[str],
        force: bool = False,
    ) -> ConsentNeed:
        """`force` is the front's "ask again even if remembered" (OIDC `prompt=consent`)."""
        if first_party and not force:
            return ConsentNeed.FIRST_PARTY
        if not force and set(scopes) <= self._store.granted_scopes(user.id, client_id):
            return ConsentNeed.REMEMBERED
        return ConsentNeed.ASK

    def record(
        self,
        user: User,
        *,
        client_id: str,
        scopes: Sequence[str],
        allowed: bool,
        ctx: RequestContext | None,
    ) -> None:
        """Remembers a grant (never a refusal: the next request simply asks again) and audits
        the answer either way."""
        with self._uow.atomic() as tx:
            if allowed:
                self._store.grant(user.id, client_id, scopes, self._clock.now())
            tx.record(
                EventType.CONSENT_GRANTED,
                actor=Actor("user", user.sub),
                target=client_id,
                outcome="success" if allowed else "denied",
                details={"scope": " ".join(scopes), "decision": "allow" if allowed else "deny"},
                ctx=ctx,
            )

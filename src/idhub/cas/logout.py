"""CAS single logout: when an SSO session ends, every CAS service that received a service ticket
under it gets the back-channel `logoutRequest` POST (CAS 3.0 Appendix C) naming that ticket as
its `SessionIndex`, through the same durable, retried delivery queue as OpenID Connect
back-channel logout (`core/logout.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from xml.sax.saxutils import escape

from idhub.cas.attributes import iso_instant
from idhub.cas.tickets import CasTickets
from idhub.core.cas import CasService
from idhub.core.clock import Clock
from idhub.core.crypto import new_token
from idhub.core.logout import Delivery, DeliveryFailed, DeliveryStore
from idhub.core.sessions import Participant

PROTOCOL = "cas"
# The deliveries table holds URIs up to this length.
MAX_LOGOUT_URI = 1000


class ServiceLookup(Protocol):
    def get(self, name: str) -> CasService | None: ...


def logout_request_xml(*, request_id: str, issued_at: float, session_index: str) -> str:
    return (
        '<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
        f'ID="{request_id}" Version="2.0" IssueInstant="{iso_instant(issued_at)}">'
        "<saml:NameID>@NOT_USED@</saml:NameID>"
        f"<samlp:SessionIndex>{escape(session_index)}</samlp:SessionIndex>"
        "</samlp:LogoutRequest>"
    )


class CasLogoutQueue:
    """The `LogoutNotifier` for protocol "cas": one delivery per service ticket of the session.
    Its parts are passed as callables so building `services.logout` builds no CAS parts."""

    def __init__(
        self,
        *,
        services: Callable[[], ServiceLookup],
        tickets: Callable[[], CasTickets],
        deliveries: DeliveryStore,
        enabled: bool = True,
    ) -> None:
        self._services = services
        self._tickets = tickets
        self._deliveries = deliveries
        self._enabled = enabled

    def queue(self, participant: Participant, *, sid: str, user_sub: str, now: float) -> bool:
        if not self._enabled:
            return False
        service = self._services().get(participant.client_id)
        if service is None or not service.single_logout:
            return False
        queued = False
        for record in self._tickets().for_session(sid, service.name):
            if len(record.service_url) > MAX_LOGOUT_URI:
                continue
            self._deliveries.queue(
                client_id=service.name,
                sid=sid,
                user_sub=user_sub,
                uri=record.service_url,
                now=now,
                protocol=PROTOCOL,
                ref=record.ticket_hash,
            )
            queued = True
        return queued


class CasLogoutRequests:
    """The `LogoutMessageBuilder` for protocol "cas": `logoutRequest=<samlp:LogoutRequest>`."""

    def __init__(self, tickets: Callable[[], CasTickets], clock: Clock) -> None:
        self._tickets = tickets
        self._clock = clock

    def build(self, delivery: Delivery) -> dict[str, str]:
        tickets = self._tickets()
        record = tickets.get(delivery.ref) if delivery.ref else None
        if record is None or record.sealed is None:
            raise DeliveryFailed("the service ticket is no longer known")
        xml = logout_request_xml(
            request_id=f"LR-{new_token(16)}",
            issued_at=self._clock.now(),
            session_index=tickets.reveal(record),
        )
        return {"logoutRequest": xml}

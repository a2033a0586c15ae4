"""Telling SAML service providers that an SSO session ended (idhub-initiated Single Logout).

When a session ends, from any front or `idhub session revoke`, `SamlLogoutNotifier` queues one
durable delivery per SAML SP that took part and lists a back-channel SingleLogoutService (SOAP,
else HTTP-POST); `SamlLogoutSender` builds the signed LogoutRequest at attempt time and posts it.
Failures are retried and recorded exactly like OpenID Connect back-channel logout
(`core/logout.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from idhub.core.identity import User
from idhub.core.logout import Delivery, DeliveryFailed, DeliveryStore
from idhub.core.sessions import Participant
from idhub.saml.attributes import name_id_for, session_index_for
from idhub.saml.idp import IdentityProvider, back_channel_endpoint
from idhub.saml.metadata import Endpoint
from idhub.saml.registry import SpRegistry

PROTOCOL = "saml"


class UserBySub(Protocol):
    def get_user_by_sub(self, sub: str) -> User | None: ...


class SamlLogoutChannel(Protocol):
    def send(self, endpoint: Endpoint, logout_request_xml: str) -> None:
        """Posts the LogoutRequest; raises `DeliveryFailed` with a short reason."""
        ...


class SamlLogoutNotifier:
    def __init__(self, registry: Callable[[], SpRegistry], deliveries: DeliveryStore) -> None:
        self._registry = registry
        self._deliveries = deliveries

    def queue(self, participant: Participant, *, sid: str, user_sub: str, now: float) -> bool:
        sp = self._registry().get(participant.client_id)
        endpoint = back_channel_endpoint(sp) if sp is not None else None
        if endpoint is None:
            return False
        self._deliveries.queue(
            client_id=participant.client_id,
            sid=sid,
            user_sub=user_sub,
            uri=endpoint.location,
            now=now,
            protocol=PROTOCOL,
        )
        return True


class SamlLogoutSender:
    def __init__(
        self,
        *,
        registry: Callable[[], SpRegistry],
        idp: Callable[[], IdentityProvider],
        users: UserBySub,
        channel: SamlLogoutChannel,
        opaque: Callable[[str], str],
    ) -> None:
        self._registry = registry
        self._idp = idp
        self._users = users
        self._channel = channel
        self._opaque = opaque

    def send(self, delivery: Delivery) -> None:
        sp = self._registry().get(delivery.client_id)
        if sp is None:
            raise DeliveryFailed("service provider no longer registered")
        user = self._users.get_user_by_sub(delivery.user_sub)
        if user is None:
            raise DeliveryFailed("user no longer exists")
        endpoint, xml = self._idp().logout_request(
            sp,
            name_id=name_id_for(sp, user, opaque=self._opaque),
            session_index=session_index_for(delivery.sid or "", opaque=self._opaque),
        )
        self._channel.send(endpoint, xml)

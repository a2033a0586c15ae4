"""Ending sessions: RP-initiated logout, admin "log out everywhere" (contract 5) and OpenID
Connect Back-Channel Logout 1.0 delivery with retries.

This is the one place a session ends, whichever front asked (OIDC RP-initiated logout, a CAS or
SAML logout, the console, a directory sync disabling a leaver). Ending a session does three
things, in this order, so a failure later never leaves a session half-alive: mark the session
ended, revoke the refresh-token families issued under it, and tell every system that took part,
each through the notifier for the protocol it signed in with (OpenID Connect: one back-channel
delivery per client that registered a `backchannel_logout_uri`; CAS: one `logoutRequest` per
service ticket).
Deliveries are attempted at once by the worker and retried with backoff, whatever their
protocol; each message is built at attempt time by that protocol's builder (an OIDC logout token
is signed then, with a fresh `jti`, `iat`, `exp`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.identity import User
from idhub.core.sessions import Participant, SsoSession
from idhub.core.transactions import UnitOfWork

# Seconds to wait after the 1st, 2nd, ... failed attempt; after the last one the delivery fails.
RETRY_DELAYS: tuple[float, ...] = (5, 30, 120, 600, 3600)
# How long a claimed delivery is reserved for the worker making the attempt.
CLAIM_SECONDS = 60.0


class DeliveryFailed(Exception):
    """One attempt to deliver a logout message did not get a 200/204 back."""


@dataclass(frozen=True)
class Delivery:
    id: int
    client_id: str
    sid: str | None
    user_sub: str
    uri: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    delivered_at: float | None
    protocol: str = "oidc"
    # The protocol's own reference for building the message (e.g. the CAS ticket it names).
    ref: str | None = None


class DeliveryStore(Protocol):
    def queue(
        self,
        *,
        client_id: str,
        sid: str | None,
        user_sub: str,
        uri: str,
        now: float,
        protocol: str = "oidc",
        ref: str | None = None,
    ) -> int: ...
    def due(self, now: float, *, limit: int = 50) -> list[Delivery]: ...
    def claim(self, delivery: Delivery, *, until: float) -> bool: ...
    def mark_delivered(self, delivery_id: int, *, attempts: int, now: float) -> None: ...
    def mark_retry(
        self, delivery_id: int, *, attempts: int, error: str, next_at: float
    ) -> None: ...
    def mark_failed(self, delivery_id: int, *, attempts: int, error: str) -> None: ...


class LogoutChannel(Protocol):
    def send(self, uri: str, fields: Mapping[str, str]) -> None:
        """POSTs `fields` as a form; raises `DeliveryFailed` with a short reason."""
        ...


class LogoutMessageBuilder(Protocol):
    """Builds the form one delivery posts, in its protocol's words (at attempt time)."""

    def build(self, delivery: Delivery) -> dict[str, str]:
        """The form fields; raises `DeliveryFailed` when the message cannot be made."""
        ...


class LogoutTokenSigner(Protocol):
    def sign_logout_token(self, client: Any, *, sub: str, sid: str | None) -> str: ...


class ClientLookup(Protocol):
    def get(self, client_id: str) -> Any: ...


class RefreshRevoker(Protocol):
    def revoke_families_for_session(self, sid: str) -> Any: ...
    def revoke_families_for_user(self, user_id: int) -> Any: ...


class SessionEnder(Protocol):
    def get(self, sid: str) -> SsoSession | None: ...
    def active_for_user(self, user_id: int) -> list[SsoSession]: ...
    def end(self, sid: str, *, reason: str) -> bool: ...


class UserById(Protocol):
    def get_user(self, user_id: int) -> User | None: ...


class LogoutSender(Protocol):
    """Builds and sends one queued delivery in its protocol's words, for a protocol whose
    notice is not a form post (SAML's SOAP LogoutRequest); raises `DeliveryFailed` with a
    short reason."""

    def send(self, delivery: Delivery) -> None: ...


class LogoutNotifier(Protocol):
    """Tells one participating system that a session ended, in its protocol's way."""

    def queue(self, participant: Participant, *, sid: str, user_sub: str, now: float) -> bool:
        """Queues (or sends) the notice; False when this system asked not to be told."""
        ...


class BackChannelQueue:
    """OpenID Connect Back-Channel Logout: a durable delivery per client with a
    `backchannel_logout_uri`; the delivery worker signs and posts the logout token."""

    def __init__(self, clients: Callable[[], ClientLookup], deliveries: DeliveryStore) -> None:
        self._clients = clients
        self._deliveries = deliveries

    def queue(self, participant: Participant, *, sid: str, user_sub: str, now: float) -> bool:
        client = self._clients().get(participant.client_id)
        uri = getattr(client, "backchannel_logout_uri", None) if client is not None else None
        if not uri:
            return False
        self._deliveries.queue(
            client_id=participant.client_id, sid=sid, user_sub=user_sub, uri=uri, now=now
        )
        return True


class LogoutTokens:
    """OpenID Connect Back-Channel Logout 1.0 §2.5: `logout_token=<signed JWT>`."""

    def __init__(
        self, clients: Callable[[], ClientLookup], signer: Callable[[], LogoutTokenSigner]
    ) -> None:
        self._clients = clients
        self._signer = signer

    def build(self, delivery: Delivery) -> dict[str, str]:
        client = self._clients().get(delivery.client_id)
        if client is None:
            raise DeliveryFailed("client no longer registered")
        token = self._signer().sign_logout_token(client, sub=delivery.user_sub, sid=delivery.sid)
        return {"logout_token": token}


def retry_delay(attempts: int) -> float | None:
    """Delay before the next attempt after `attempts` failed ones; None when out of retries."""
    if attempts <= 0:
        return 0.0
    return RETRY_DELAYS[attempts - 1] if attempts <= len(RETRY_DELAYS) else None


class LogoutService:
    """`services.logout`."""

    def __init__(
        self,
        *,
        sessions: SessionEnder,
        users: UserById,
        clients: Callable[[], ClientLookup],
        signer: Callable[[], LogoutTokenSigner],
        revoker: Callable[[], RefreshRevoker],
        deliveries: DeliveryStore,
        channel: LogoutChannel,
        audit: Auditor,
        clock: Clock,
        uow: UnitOfWork,
        notifiers: dict[str, LogoutNotifier] | None = None,
    ) -> None:
        self._uow = uow
        # Token-side parts are passed as callables so building `services.logout` does not load
        # signing keys until a delivery is actually made.
        self._sessions = sessions
        self._users = users
        self._clients = clients
        self._signer = signer
        self._revoker = revoker
        self._deliveries = deliveries
        self._channel = channel
        self._audit = audit
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        # protocol -> how its systems are told; a front for a new protocol adds its own.
        self._notifiers: dict[str, LogoutNotifier] = {"oidc": BackChannelQueue(clients, deliveries)}
        self._notifiers.update(notifiers or {})
        # protocol -> how its queued deliveries become the form that is posted, or (for a
        # protocol that is not a form post, such as SAML's SOAP) who sends them itself.
        self._builders: dict[str, LogoutMessageBuilder] = {"oidc": LogoutTokens(clients, signer)}
        self._senders: dict[str, LogoutSender] = {}

    def register_notifier(
        self,
        protocol: str,
        notifier: LogoutNotifier,
        *,
        builder: LogoutMessageBuilder | None = None,
        sender: LogoutSender | None = None,
    ) -> None:
        """How systems that signed in with `protocol` are told of a logout (one per protocol).
        The deliveries its notifier queues are posted as the form `builder` makes, or handed to
        `sender` when the protocol sends its own way; either way retried and recorded alike."""
        self._notifiers[protocol] = notifier
        if builder is not None:
            self._builders[protocol] = builder
        if sender is not None:
            self._senders[protocol] = sender

    def on_queued(self, listener: Callable[[], None]) -> None:
        """`listener` is called after deliveries were queued (the worker wakes up)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ ending sessions

    def end_session(
        self,
        sid: str,
        *,
        reason: str,
        actor: Actor,
        ctx: RequestContext | None = None,
        initiator: str | None = None,
    ) -> bool:
        """Ends one SSO session (RP-initiated or user logout). False if it had already ended.
        `initiator` is the client that asked (RP-initiated logout), for the audit event."""
        session = self._sessions.get(sid)
        if session is None:
            return False
        # The session's end, its families' revocation, the queued logout messages and the
        # event commit together (core/transactions.py).
        with self._uow.atomic() as tx:
            ended = self._finish(session, reason=reason)
            if ended:
                details: dict[str, Any] = {
                    "sid": sid,
                    "reason": reason,
                    "clients": list(session.clients),
                }
                if initiator:
                    details["initiator"] = initiator
                tx.record(
                    EventType.LOGOUT,
                    actor=actor,
                    target=self._sub(session.user_id),
                    details=details,
                    ctx=ctx,
                )
                tx.after_commit(self._notify)
        return ended

    def logout_user_everywhere(
        self, user_id: int, *, reason: str, actor: Actor, ctx: RequestContext | None = None
    ) -> int:
        """Contract 5: ends every SSO session of the user, revokes all their refresh-token
        families and queues back-channel logout to every client that took part."""
        ended = 0
        clients: list[str] = []
        with self._uow.atomic() as tx:
            for session in self._sessions.active_for_user(user_id):
                if self._finish(session, reason=reason):
                    ended += 1
                    clients.extend(c for c in session.clients if c not in clients)
            # Families without a session (e.g. issued before a logout) go too.
            self._revoker().revoke_families_for_user(user_id)
            tx.record(
                EventType.SESSION_REVOKED,
                actor=actor,
                target=self._sub(user_id),
                details={"sessions": ended, "reason": reason, "clients": clients},
                ctx=ctx,
            )
            if ended:
                tx.after_commit(self._notify)
        return ended

    def _finish(self, session: SsoSession, *, reason: str) -> bool:
        if not self._sessions.end(session.sid, reason=reason):
            return False
        self._revoker().revoke_families_for_session(session.sid)
        sub = self._sub(session.user_id)
        now = self._clock.now()
        for participant in session.participants:
            notifier = self._notifiers.get(participant.protocol)
            if notifier is not None:
                notifier.queue(participant, sid=session.sid, user_sub=sub, now=now)
        return True

    def _sub(self, user_id: int) -> str:
        user = self._users.get_user(user_id)
        return user.sub if user is not None else f"user-id:{user_id}"

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    # ------------------------------------------------------------------ delivering

    def claim_due(self, *, limit: int = 50) -> list[Delivery]:
        now = self._clock.now()
        return [
            d
            for d in self._deliveries.due(now, limit=limit)
            if self._deliveries.claim(d, until=now + CLAIM_SECONDS)
        ]

    def attempt(self, delivery: Delivery) -> bool:
        """One delivery attempt; records and audits the outcome. True when delivered."""
        attempts = delivery.attempts + 1
        try:
            sender = self._senders.get(delivery.protocol)
            builder = self._builders.get(delivery.protocol)
            if sender is not None:
                sender.send(delivery)
            elif builder is not None:
                self._channel.send(delivery.uri, builder.build(delivery))
            else:
                raise DeliveryFailed(f"no logout message for protocol {delivery.protocol!r}")
        except DeliveryFailed as exc:
            self._record_failure(delivery, attempts, str(exc) or "delivery failed")
            return False
        except Exception as exc:  # a bad client or key must not kill the worker
            self._record_failure(delivery, attempts, f"{type(exc).__name__}: {exc}")
            return False
        self._deliveries.mark_delivered(delivery.id, attempts=attempts, now=self._clock.now())
        details: dict[str, Any] = {
            "sid": delivery.sid,
            "attempts": attempts,
            "delivery_id": delivery.id,
        }
        if delivery.protocol != "oidc":
            details["protocol"] = delivery.protocol
        self._audit.record(
            EventType.BACKCHANNEL_DELIVERED,
            actor=Actor.system(),
            target=delivery.client_id,
            details=details,
        )
        return True

    def deliver_due(self, *, limit: int = 50) -> tuple[int, int]:
        """Attempts every due delivery once, one after another; returns (delivered, failed)."""
        ok = bad = 0
        for delivery in self.claim_due(limit=limit):
            if self.attempt(delivery):
                ok += 1
            else:
                bad += 1
        return ok, bad

    def _record_failure(self, delivery: Delivery, attempts: int, error: str) -> None:
        delay = retry_delay(attempts)
        final = delay is None
        if final:
            self._deliveries.mark_failed(delivery.id, attempts=attempts, error=error)
        else:
            assert delay is not None
            self._deliveries.mark_retry(
                delivery.id, attempts=attempts, error=error, next_at=self._clock.now() + delay
            )
        self._audit.record(
            EventType.BACKCHANNEL_FAILED,
            actor=Actor.system(),
            target=delivery.client_id,
            outcome="failure" if final else "error",
            details={
                "sid": delivery.sid,
                "attempts": attempts,
                "delivery_id": delivery.id,
                "error": error[:200],
                "will_retry": not final,
                **({"protocol": delivery.protocol} if delivery.protocol != "oidc" else {}),
            },
        )

"""Single sign-on sessions: what a browser's session cookie stands for, how long it lives, and
which systems took part in it. When a request may use a session is decided by the sign-in core
(`core/signin.py`).

The cookie holds a random value; the database holds only its SHA-256, so a copy of the
database cannot be replayed as cookies. Each session also has a public `sid` (put in ID tokens
and logout tokens). Signing in always issues a new cookie value (session fixation defence);
signing in again as the same person keeps the `sid`, so the systems already signed in through
this session are still told when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from idhub.core.audit import RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import new_token, sha256_hex
from idhub.core.identity import User

COOKIE_NAME = "idhub_session"
# last_seen_at is written at most this often, so busy SSO traffic does not write every request.
TOUCH_INTERVAL = 60.0


@dataclass(frozen=True)
class Participant:
    """A system that signed in through a session, and the protocol it used (which decides how
    it is told when the session ends)."""

    client_id: str
    protocol: str = "oidc"


@dataclass(frozen=True)
class SsoSession:
    sid: str
    user_id: int
    auth_time: float
    amr: tuple[str, ...] = ()
    acr: str | None = None
    created_at: float = 0.0
    last_seen_at: float = 0.0
    expires_at: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    participants: tuple[Participant, ...] = field(default_factory=tuple)

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(p.client_id for p in self.participants)

    def is_active(self, now: float) -> bool:
        return self.ended_at is None and self.expires_at > now


class SessionStore(Protocol):
    def insert(self, *, id_hash: str, session: SsoSession) -> None: ...
    def rekey(
        self,
        sid: str,
        *,
        new_id_hash: str,
        auth_time: float,
        amr: Sequence[str],
        acr: str | None,
        expires_at: float,
        now: float,
    ) -> None: ...
    def by_id_hash(self, id_hash: str) -> SsoSession | None: ...
    def by_sid(self, sid: str) -> SsoSession | None: ...
    def active_for_user(self, user_id: int, now: float) -> list[SsoSession]: ...
    def touch(self, sid: str, now: float) -> None: ...
    def end(self, sid: str, *, reason: str, now: float) -> bool: ...
    def add_client(
        self, sid: str, client_id: str, now: float, *, protocol: str = "oidc"
    ) -> None: ...
    def clients(self, sid: str) -> list[str]: ...


class SsoSessions:
    """`services.sessions`: start, find, rotate and end SSO sessions."""

    def __init__(self, store: SessionStore, clock: Clock, *, ttl: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl

    @property
    def ttl(self) -> float:
        return self._ttl

    def start(
        self,
        user: User,
        *,
        amr: Sequence[str],
        acr: str | None = None,
        ctx: RequestContext | None = None,
        previous: SsoSession | None = None,
    ) -> tuple[str, SsoSession]:
        """Signs `user` in; returns (new cookie value, session). If the browser already had a
        session of the same user, that session keeps its `sid` under a new cookie value."""
        now = self._clock.now()
        cookie = new_token(32)
        if previous is not None and previous.user_id == user.id and previous.is_active(now):
            self._store.rekey(
                previous.sid,
                new_id_hash=sha256_hex(cookie),
                auth_time=now,
                amr=list(amr),
                acr=acr,
                expires_at=now + self._ttl,
                now=now,
            )
            session = self._store.by_sid(previous.sid)
            assert session is not None
            return cookie, session
        session = SsoSession(
            sid=new_token(24),
            user_id=user.id,
            auth_time=now,
            amr=tuple(amr),
            acr=acr,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self._ttl,
            ip=ctx.client_ip if ctx else None,
            user_agent=ctx.user_agent if ctx else None,
        )
        self._store.insert(id_hash=sha256_hex(cookie), session=session)
        return cookie, session

    def resolve(self, cookie: str | None) -> SsoSession | None:
        """The active session a cookie value stands for, or None."""
        if not cookie or len(cookie) > 200:
            return None
        session = self._store.by_id_hash(sha256_hex(cookie))
        now = self._clock.now()
        if session is None or not session.is_active(now):
            return None
        if now - session.last_seen_at > TOUCH_INTERVAL:
            self._store.touch(session.sid, now)
        return session

    def get(self, sid: str) -> SsoSession | None:
        return self._store.by_sid(sid)

    def active_for_user(self, user_id: int) -> list[SsoSession]:
        return self._store.active_for_user(user_id, self._clock.now())

    def add_client(self, sid: str, client_id: str, *, protocol: str = "oidc") -> None:
        self._store.add_client(sid, client_id, self._clock.now(), protocol=protocol)

    def clients(self, sid: str) -> list[str]:
        return self._store.clients(sid)

    def end(self, sid: str, *, reason: str) -> bool:
        """Marks the session ended; False if it had already ended. Use `services.logout` to
        also revoke tokens and tell the participating systems."""
        return self._store.end(sid, reason=reason, now=self._clock.now())

"""The sign-in chain (contract 6): find the user, refuse disabled or locked accounts, check the
password with the verifier for the user's source, count failures and lock after too many.

Every outcome is audited with a reason (`unknown_user`, `bad_password`, `disabled`, `locked`,
`directory_unreachable`); the person at the login page only ever learns "wrong username or
password" or "the directory is unreachable", so the page never tells whether a user exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.identity import LOCAL_SOURCE, PasswordVerifier, User
from idhub.core.passwords import PasswordHasher
from idhub.errors import AuthenticationFailed, DirectoryUnavailable

REASONS = ("unknown_user", "bad_password", "disabled", "locked", "directory_unreachable")
MAX_USERNAME = 200


@dataclass(frozen=True)
class LockoutPolicy:
    """Five wrong passwords lock an account for fifteen minutes (the counter restarts after a
    lock and after a successful sign-in). Locking slows guessing against one account without
    letting an attacker lock someone out for long."""

    max_failures: int = 5
    lock_seconds: float = 15 * 60


class UserLookup(Protocol):
    def get_user_by_username(self, username: str) -> User | None: ...
    def register_failed_login(
        self, user_id: int, *, lock_after: int, lock_seconds: float
    ) -> User: ...
    def clear_failed_logins(self, user_id: int) -> None: ...


class Authenticator:
    def __init__(
        self,
        *,
        users: UserLookup,
        local_verifier: PasswordVerifier,
        verifier_for: Callable[[str], PasswordVerifier | None],
        hasher: PasswordHasher,
        audit: Auditor,
        clock: Clock,
        lockout: LockoutPolicy | None = None,
        fingerprint: Callable[[str], str] | None = None,
    ) -> None:
        self._users = users
        self._local = local_verifier
        self._verifier_for = verifier_for
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._lockout = lockout or LockoutPolicy()
        self._fingerprint = fingerprint

    @property
    def lockout(self) -> LockoutPolicy:
        return self._lockout

    def authenticate(self, username: str, password: str, *, ctx: RequestContext | None) -> User:
        """Returns the signed-in user or raises `AuthenticationFailed` (reason inside)."""
        username = username.strip()
        user = self._find(username)
        if user is None:
            # Spend the time a real check takes so response time does not reveal existence.
            self._hasher.spend_equal_time(password)
            self._fail(username, None, "unknown_user", ctx)
        if user.disabled:
            self._hasher.spend_equal_time(password)
            self._fail(username, user, "disabled", ctx)
        if user.is_locked(self._clock.now()):
            self._hasher.spend_equal_time(password)
            self._fail(username, user, "locked", ctx)

        verifier = self._local if user.source == LOCAL_SOURCE else self._verifier_for(user.source)
        try:
            if verifier is None:
                # A source whose verifier is not configured on this server cannot be reached.
                raise DirectoryUnavailable(f"no password verifier for source {user.source!r}")
            verifier.verify(user, password)
        except DirectoryUnavailable as exc:
            self._fail(username, user, "directory_unreachable", ctx, detail=exc.message)
        except AuthenticationFailed as exc:
            reason = exc.reason if exc.reason in REASONS else "bad_password"
            if reason == "bad_password":
                user = self._users.register_failed_login(
                    user.id,
                    lock_after=self._lockout.max_failures,
                    lock_seconds=self._lockout.lock_seconds,
                )
                if user.is_locked(self._clock.now()):
                    self._fail(username, user, "bad_password", ctx, detail="account now locked")
            self._fail(username, user, reason, ctx)

        if user.failed_logins or user.locked_until is not None:
            self._users.clear_failed_logins(user.id)
        self._audit.record(
            EventType.LOGIN_SUCCEEDED,
            actor=Actor("user", user.sub),
            target=user.username,
            details={"source": user.source, "amr": ["pwd"]},
            ctx=ctx,
        )
        return user

    def _find(self, username: str) -> User | None:
        if not username or len(username) > MAX_USERNAME:
            return None
        user = self._users.get_user_by_username(username)
        if user is None and username != username.lower():
            # People type "Alice" for alice; directories compare names case-insensitively too.
            user = self._users.get_user_by_username(username.lower())
        return user

    def _fail(
        self,
        username: str,
        user: User | None,
        reason: str,
        ctx: RequestContext | None,
        *,
        detail: str | None = None,
    ) -> NoReturn:
        details: dict[str, object] = {"reason": reason}
        target: str | None = None
        if user is not None:
            details["source"] = user.source
            target = user.username
        elif username and self._fingerprint is not None:
            # What was typed is not an account name and may be a password typed in the wrong
            # box: the append-only log keeps only a keyed fingerprint, enough to see repeated
            # guesses at the same name without ever holding the text.
            details["typed_name_fingerprint"] = self._fingerprint(username)[:16]
        if detail:
            details["detail"] = detail[:200]
        self._audit.record(
            EventType.LOGIN_FAILED,
            actor=Actor("user", user.sub if user is not None else None),
            target=target,
            outcome="failure",
            details=details,
            ctx=ctx,
        )
        if reason == "directory_unreachable":
            raise DirectoryUnavailable()
        raise AuthenticationFailed(reason)

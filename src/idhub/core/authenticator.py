"""The sign-in chain (contract 6): ask the throttle, find the user, refuse disabled or locked
accounts, check the password with the verifier for the user's source, and count failures per
source address and per account (core/throttle.py).

Every outcome is audited with a reason (`unknown_user`, `bad_password`, `disabled`, `locked`,
`throttled`, `directory_unreachable`); the person at the login page only ever learns "wrong
username or password", "the directory is unreachable" or "too many attempts, try again in N
minutes", so the page never tells whether a user exists or whether a refused password was right.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import NoReturn, Protocol

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import sha256_hex
from idhub.core.failure_audit import FailureAudit
from idhub.core.identity import LOCAL_SOURCE, PasswordVerifier, User
from idhub.core.passwords import PasswordHasher
from idhub.core.request_budget import LOGIN_REFUSED
from idhub.core.throttle import (
    ACCOUNT,
    IP,
    Counter,
    Reading,
    Refusal,
    Throttle,
    ThrottleKey,
    ThrottleRule,
    source_of,
)
from idhub.errors import AuthenticationFailed, DirectoryUnavailable, TooManyAttempts

REASONS = (
    "unknown_user",
    "bad_password",
    "disabled",
    "locked",
    "throttled",
    "directory_unreachable",
)
# Failures that count against the address and the account. A disabled account and a name that
# is no account count like a wrong password, so lockouts cannot tell them apart.
COUNTED = ("unknown_user", "bad_password", "disabled")
MAX_USERNAME = 200


class UserLookup(Protocol):
    def get_user_by_username(self, username: str) -> User | None: ...
    def set_locked_until(self, user_id: int, until: float | None) -> None: ...
    def clear_failed_logins(self, user_id: int) -> None: ...


def account_key(username: str, user: User | None, fingerprint: Callable[[str], str]) -> str:
    """The throttle key of the account a sign-in names: the user's id, or a keyed fingerprint
    of the name as typed (NFKC, case-folded), never the text itself."""
    if user is not None:
        return f"user:{user.id}"
    canonical = unicodedata.normalize("NFKC", username).strip().casefold()
    return f"name:{fingerprint(canonical)[:32]}"


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
        throttle: Throttle,
        fingerprint: Callable[[str], str] | None = None,
        failures: FailureAudit | None = None,
    ) -> None:
        self._users = users
        self._local = local_verifier
        self._verifier_for = verifier_for
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._throttle = throttle
        self._fingerprint = fingerprint
        # Refusals (throttled, locked) cost no password check and come as fast as they are
        # sent: their events are written within the per-address budget.
        self._failures = failures

    @property
    def lockout(self) -> ThrottleRule:
        """The per-account rule (failures before a lock, its length)."""
        return self._throttle.policy.account

    def authenticate(
        self,
        username: str,
        password: str,
        *,
        ctx: RequestContext | None,
        record_success: bool = True,
    ) -> User:
        """Returns the signed-in user or raises `AuthenticationFailed` (reason inside);
        `TooManyAttempts` when the throttle refused the attempt. `record_success=False`: the
        caller records `login.succeeded` (`record_success`) in the transaction that starts
        the session."""
        username = username.strip()
        user = self._find(username)
        reading = self._throttle.read(self.keys_for(username, user, ctx))
        if reading.refusal is not None:
            self._refuse(username, user, reading.refusal, ctx)
        if user is None:
            # Spend the time a real check takes so response time does not reveal existence.
            self._hasher.spend_equal_time(password)
            self._fail(username, None, "unknown_user", ctx, reading=reading)
        if user.disabled:
            self._hasher.spend_equal_time(password)
            self._fail(username, user, "disabled", ctx, reading=reading)
        if user.is_locked(self._clock.now()):
            self._hasher.spend_equal_time(password)
            self._fail(username, user, "locked", ctx, refused=True)

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
            self._fail(username, user, reason, ctx, reading=reading)

        if user.failed_logins or user.locked_until is not None:
            self._users.clear_failed_logins(user.id)
        self._throttle.apply_success(reading, kinds=(ACCOUNT,))
        if record_success:
            self.record_success(user, ctx=ctx)
        return user

    def record_success(self, user: User, *, ctx: RequestContext | None) -> None:
        self._audit.record(
            EventType.LOGIN_SUCCEEDED,
            actor=Actor("user", user.sub),
            target=user.username,
            details={"source": user.source, "amr": ["pwd"]},
            ctx=ctx,
        )

    def keys_for(
        self, username: str, user: User | None, ctx: RequestContext | None
    ) -> list[ThrottleKey]:
        """The address first: it is what stops spraying across many names."""
        keys = []
        source = source_of(ctx.client_ip if ctx is not None else None)
        if source is not None:
            keys.append(ThrottleKey(IP, source))
        keys.append(ThrottleKey(ACCOUNT, account_key(username, user, self._typed_fingerprint)))
        return keys

    def _typed_fingerprint(self, value: str) -> str:
        return self._fingerprint(value) if self._fingerprint is not None else sha256_hex(value)

    def _find(self, username: str) -> User | None:
        if not username or len(username) > MAX_USERNAME:
            return None
        user = self._users.get_user_by_username(username)
        if user is None and username != username.lower():
            # People type "Alice" for alice; directories compare names case-insensitively too.
            user = self._users.get_user_by_username(username.lower())
        return user

    def _refuse(
        self, username: str, user: User | None, refusal: Refusal, ctx: RequestContext | None
    ) -> NoReturn:
        details: dict[str, object] = {
            "scope": refusal.key.kind,
            "locked": refusal.locked,
            "retry_after": round(refusal.retry_after),
        }
        if refusal.key.kind == ACCOUNT and refusal.locked:
            # Kept as a failed sign-in with reason "locked", as before there was a throttle.
            self._record(
                EventType.LOGIN_FAILED, username, user, "locked", ctx, extra=details, refused=True
            )
            raise TooManyAttempts("locked", retry_after=refusal.retry_after)
        self._record(
            EventType.LOGIN_THROTTLED, username, user, "throttled", ctx, extra=details, refused=True
        )
        raise TooManyAttempts("throttled", retry_after=refusal.retry_after)

    def _fail(
        self,
        username: str,
        user: User | None,
        reason: str,
        ctx: RequestContext | None,
        *,
        detail: str | None = None,
        reading: Reading | None = None,
        refused: bool = False,
    ) -> NoReturn:
        locked: list[Counter] = []
        if reading is not None and reason in COUNTED:
            locked = self._throttle.apply_failure(reading)
        for counter in locked:
            if counter.kind == ACCOUNT and user is not None and counter.locked_until is not None:
                # Mirrored on the user so `idhub user show` and every reader of the user see it.
                self._users.set_locked_until(user.id, counter.locked_until)
                detail = "account now locked"
        self._record(
            EventType.LOGIN_FAILED, username, user, reason, ctx, detail=detail, refused=refused
        )
        for counter in locked:
            self._record(
                EventType.LOGIN_LOCKOUT,
                username,
                user,
                "locked",
                ctx,
                extra={
                    "scope": counter.kind,
                    "failures": counter.failures,
                    "locked_until": counter.locked_until,
                },
            )
        if reason == "directory_unreachable":
            raise DirectoryUnavailable()
        if locked:
            until = max(c.locked_until or 0.0 for c in locked)
            raise TooManyAttempts(reason, retry_after=until - self._clock.now())
        raise AuthenticationFailed(reason)

    def _record(
        self,
        event: EventType,
        username: str,
        user: User | None,
        reason: str,
        ctx: RequestContext | None,
        *,
        detail: str | None = None,
        extra: dict[str, object] | None = None,
        refused: bool = False,
    ) -> None:
        details: dict[str, object] = {"reason": reason, **(extra or {})}
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
        pending = PendingEvent(
            event,
            actor=Actor("user", user.sub if user is not None else None),
            target=target,
            outcome="failure",
            details=details,
            ctx=ctx,
        )
        if refused and self._failures is not None:
            self._failures.record(LOGIN_REFUSED, pending)
        else:
            self._audit.record_many([pending])

"""Second factors a person enrols: TOTP (authenticator apps), recovery codes and passkeys
(core/passkeys.py), and what an admin can see and reset.

- TOTP (RFC 6238, 30 s, 6 digits): the secret is sealed at rest (AES-GCM bound to the user id)
  and shown once as a QR code; a code is accepted one step early or late (clock drift), and a
  code is never accepted twice — nor an older one once a newer one was used — so a code seen
  over someone's shoulder cannot be replayed.
- Recovery codes: ten, shown once, stored as keyed hashes, each usable once.

Every change and every use is audited (`mfa.*` events); never a secret or a code.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyotp

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, Sealer
from idhub.core.identity import User
from idhub.core.transactions import UnitOfWork
from idhub.errors import InvalidInput

TOTP_STEP = 30
TOTP_DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
# Wrong second factors in a row before the second factor is refused for BLOCK_FOR seconds: with
# one-in-a-million codes, five tries per quarter hour keep guessing hopeless.
FAILURE_LIMIT = 5
BLOCK_FOR = 900.0


@dataclass(frozen=True)
class MfaAccount:
    user_id: int
    required: bool = False
    totp_secret_enc: bytes | None = None
    totp_confirmed_at: float | None = None
    totp_last_step: int | None = None
    failed_attempts: int = 0
    blocked_until: float | None = None

    @property
    def totp_enrolled(self) -> bool:
        return self.totp_secret_enc is not None and self.totp_confirmed_at is not None


@dataclass(frozen=True)
class Passkey:
    id: int
    user_id: int
    credential_id: str
    public_key: bytes
    sign_count: int
    name: str
    created_at: float
    last_used_at: float | None = None


@dataclass(frozen=True)
class MfaStatus:
    required: bool
    totp: bool
    passkeys: tuple[Passkey, ...]
    recovery_codes_left: int

    @property
    def enrolled(self) -> bool:
        return self.totp or bool(self.passkeys)


class MfaStore(Protocol):
    def account(self, user_id: int) -> MfaAccount | None: ...
    def set_required(self, user_id: int, required: bool, now: float) -> None: ...
    def save_totp(self, user_id: int, secret_enc: bytes, now: float) -> None: ...
    def confirm_totp(self, user_id: int, step: int, now: float) -> bool: ...
    def claim_totp_step(self, user_id: int, step: int) -> bool:
        """Records `step` as used if it is newer than the last one used; False otherwise."""
        ...

    def remove_totp(self, user_id: int, now: float) -> bool: ...
    def record_failure(self, user_id: int, now: float, *, limit: int, block_for: float) -> None: ...
    def clear_failures(self, user_id: int) -> None: ...
    def replace_recovery_codes(self, user_id: int, hashes: Sequence[str], now: float) -> None: ...
    def use_recovery_code(self, user_id: int, code_hash: str, now: float) -> bool: ...
    def recovery_codes_left(self, user_id: int) -> int: ...
    def passkeys(self, user_id: int) -> list[Passkey]: ...
    def reset(self, user_id: int, now: float) -> None:
        """Removes TOTP, recovery codes, passkeys and remembered devices of the person."""
        ...


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    uri: str


def normalise_code(code: str) -> str:
    return "".join(ch for ch in code.strip().lower() if ch.isalnum())


def plan_totp_step(secret: str, code: str, *, now: float) -> int | None:
    """Pure: the time step `code` belongs to (allowing one step of drift), or None."""
    code = normalise_code(code)
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    current = int(now // TOTP_STEP)
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP), code):
            return step
    return None


class SecondFactors:
    """`services.mfa`: enrolment, verification, status and reset of TOTP and recovery codes."""

    def __init__(
        self,
        store: MfaStore,
        *,
        sealer: Sealer,
        recovery_hasher: KeyedHasher,
        audit: Auditor,
        clock: Clock,
        uow: UnitOfWork,
        issuer_name: str = "idhub",
    ) -> None:
        # Each factor change commits with its event (core/transactions.py).
        self._uow = uow
        self._store = store
        self._sealer = sealer
        self._hasher = recovery_hasher
        self._audit = audit
        self._clock = clock
        self._issuer_name = issuer_name

    # ------------------------------------------------------------------ what a person has

    def status(self, user: User) -> MfaStatus:
        account = self._store.account(user.id) or MfaAccount(user.id)
        return MfaStatus(
            required=account.required,
            totp=account.totp_enrolled,
            passkeys=tuple(self._store.passkeys(user.id)),
            recovery_codes_left=self._store.recovery_codes_left(user.id),
        )

    def check_enrolled(self, user_id: int) -> bool:
        account = self._store.account(user_id)
        return (account is not None and account.totp_enrolled) or bool(
            self._store.passkeys(user_id)
        )

    def check_flagged(self, user_id: int) -> bool:
        account = self._store.account(user_id)
        return account is not None and account.required

    def apply_required(self, user: User, required: bool, *, actor: Actor) -> None:
        with self._uow.atomic():
            self._store.set_required(user.id, required, self._clock.now())
            self._audit.record(
                EventType.MFA_REQUIREMENT_SET,
                actor=actor,
                target=user.sub,
                details={"required": required},
            )

    # ------------------------------------------------------------------ TOTP

    def begin_totp(self, user: User) -> TotpEnrolment:
        """A new secret waiting for its first code (replaces an unconfirmed one; an enrolled
        authenticator keeps working until the new one is confirmed)."""
        account = self._store.account(user.id)
        if account is not None and account.totp_enrolled:
            raise InvalidInput("an authenticator app is already set up; remove it first")
        secret = pyotp.random_base32()
        self._store.save_totp(user.id, self._seal(user, secret), self._clock.now())
        uri = pyotp.TOTP(secret, interval=TOTP_STEP).provisioning_uri(
            name=user.username, issuer_name=self._issuer_name
        )
        return TotpEnrolment(secret=secret, uri=uri)

    def pending_totp_uri(self, user: User) -> str | None:
        """The provisioning URI of an enrolment still waiting for its first code."""
        account = self._store.account(user.id)
        if account is None or account.totp_secret_enc is None or account.totp_enrolled:
            return None
        secret = self._open(user, account.totp_secret_enc)
        return pyotp.TOTP(secret, interval=TOTP_STEP).provisioning_uri(
            name=user.username, issuer_name=self._issuer_name
        )

    def confirm_totp(self, user: User, code: str, *, ctx: RequestContext | None) -> bool:
        account = self._store.account(user.id)
        if account is None or account.totp_secret_enc is None or account.totp_enrolled:
            return False
        now = self._clock.now()
        step = plan_totp_step(self._open(user, account.totp_secret_enc), code, now=now)
        with self._uow.atomic():
            if step is None or not self._store.confirm_totp(user.id, step, now):
                self._failed(user, "totp", "bad_code", ctx)
                return False
            self._audit.record(
                EventType.MFA_ENROLLED, actor=_self(user), target=user.sub,
                details={"method": "totp"}, ctx=ctx,
            )  # fmt: skip
        return True

    def check_totp(self, user: User, code: str, *, ctx: RequestContext | None) -> bool:
        """Verifies a code at sign-in; audits the failure (the caller audits the success with
        the sign-in it completes)."""
        account = self._store.account(user.id)
        if account is None or not account.totp_enrolled or account.totp_secret_enc is None:
            self._failed(user, "totp", "not_enrolled", ctx)
            return False
        now = self._clock.now()
        step = plan_totp_step(self._open(user, account.totp_secret_enc), code, now=now)
        if step is None:
            self._failed(user, "totp", "bad_code", ctx)
            return False
        if not self._store.claim_totp_step(user.id, step):
            self._failed(user, "totp", "code_reused", ctx)
            return False
        return True

    def remove_totp(self, user: User, *, ctx: RequestContext | None) -> bool:
        with self._uow.atomic():
            removed = self._store.remove_totp(user.id, self._clock.now())
            if removed:
                self._audit.record(
                    EventType.MFA_REMOVED, actor=_self(user), target=user.sub,
                    details={"method": "totp"}, ctx=ctx,
                )  # fmt: skip
        return removed

    # ------------------------------------------------------------------ recovery codes

    def new_recovery_codes(self, user: User, *, ctx: RequestContext | None) -> list[str]:
        """Ten new codes (the old ones stop working); shown once, kept only as keyed hashes."""
        codes = [_format_code(secrets.token_hex(5)) for _ in range(RECOVERY_CODE_COUNT)]
        hashes = [self._code_hash(user, code) for code in codes]
        with self._uow.atomic():
            self._store.replace_recovery_codes(user.id, hashes, self._clock.now())
            self._audit.record(
                EventType.MFA_RECOVERY_CODES_ISSUED, actor=_self(user), target=user.sub,
                details={"count": len(codes)}, ctx=ctx,
            )  # fmt: skip
        return codes

    def use_recovery_code(self, user: User, code: str, *, ctx: RequestContext | None) -> bool:
        normalised = normalise_code(code)
        with self._uow.atomic():
            if len(normalised) != 10 or not self._store.use_recovery_code(
                user.id, self._code_hash(user, normalised), self._clock.now()
            ):
                self._failed(user, "recovery_code", "bad_code", ctx)
                return False
            self._audit.record(
                EventType.MFA_RECOVERY_CODE_USED, actor=_self(user), target=user.sub,
                details={"left": self._store.recovery_codes_left(user.id)}, ctx=ctx,
            )  # fmt: skip
        return True

    # ------------------------------------------------------------------ guessing

    def check_blocked(self, user: User, *, ctx: RequestContext | None) -> bool:
        account = self._store.account(user.id)
        blocked = account is not None and (account.blocked_until or 0) > self._clock.now()
        if blocked:
            self._failed(user, "any", "too_many_attempts", ctx)
        return blocked

    def note_failure(self, user: User) -> None:
        self._store.record_failure(
            user.id, self._clock.now(), limit=FAILURE_LIMIT, block_for=BLOCK_FOR
        )

    def clear_failures(self, user: User) -> None:
        self._store.clear_failures(user.id)

    # ------------------------------------------------------------------ admin

    def reset(self, user: User, *, actor: Actor, ctx: RequestContext | None = None) -> None:
        """Removes every factor and remembered device: the person enrols again at next
        sign-in if they are required to."""
        with self._uow.atomic():
            self._store.reset(user.id, self._clock.now())
            self._audit.record(EventType.MFA_RESET, actor=actor, target=user.sub, ctx=ctx)

    # ------------------------------------------------------------------ helpers

    def record_used(
        self, user: User, method: str, *, ctx: RequestContext | None, passwordless: bool = False
    ) -> None:
        details: dict[str, object] = {"method": method}
        if passwordless:
            details["passwordless"] = True
        self._audit.record(
            EventType.MFA_SUCCEEDED, actor=_self(user), target=user.sub, details=details, ctx=ctx
        )

    def _failed(self, user: User, method: str, reason: str, ctx: RequestContext | None) -> None:
        self._audit.record(
            EventType.MFA_FAILED, actor=_self(user), target=user.sub,
            details={"method": method, "reason": reason}, outcome="failure", ctx=ctx,
        )  # fmt: skip

    def _seal(self, user: User, secret: str) -> bytes:
        return self._sealer.seal(secret.encode("ascii"), _aad(user))

    def _open(self, user: User, blob: bytes) -> str:
        return self._sealer.open(blob, _aad(user)).decode("ascii")

    def _code_hash(self, user: User, code: str) -> str:
        return self._hasher.hash(f"{user.id}:{normalise_code(code)}")


def _aad(user: User) -> bytes:
    return f"totp:{user.id}".encode()


def _self(user: User) -> Actor:
    return Actor("user", user.sub)


def _format_code(raw: str) -> str:
    return f"{raw[:5]}-{raw[5:]}"

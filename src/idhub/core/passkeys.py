"""Passkeys (WebAuthn): registering an authenticator and signing in with it, as a second factor
after the password or on its own ("passwordless").

Each ceremony starts with a random challenge kept server-side under a handle the browser holds
(single use: the row is deleted when the answer comes back; two minutes to answer). The relying
party id is the issuer's host and the expected origin the issuer's scheme and host, so a
credential made for idhub is useless to any other site. Signing in passwordless requires user
verification (PIN or biometric on the authenticator), which makes the passkey two factors in
one; as a second factor after a password, presence is enough.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import new_token, sha256_hex
from idhub.core.identity import User
from idhub.core.mfa import Passkey
from idhub.core.transactions import UnitOfWork

CHALLENGE_TTL = 120.0
MAX_NAME = 100
MAX_RESPONSE = 64 * 1024
# webauthn (with cbor2, ~14 MB) is imported inside the methods that run a ceremony: every
# sign-in front imports this module through `core/signin`, but a worker whose users never use
# a passkey should not carry it.


class PasskeyStore(Protocol):
    def passkeys(self, user_id: int) -> list[Passkey]: ...
    def passkey_by_credential(self, credential_id: str) -> Passkey | None: ...
    def add_passkey(
        self,
        user_id: int,
        *,
        credential_id: str,
        public_key: bytes,
        sign_count: int,
        name: str,
        now: float,
    ) -> None: ...
    def record_passkey_use(self, credential_id: str, sign_count: int, now: float) -> None: ...
    def remove_passkey(self, user_id: int, passkey_id: int) -> bool: ...
    def save_challenge(
        self,
        handle_hash: str,
        *,
        purpose: str,
        user_id: int | None,
        challenge: str,
        expires_at: float,
    ) -> None: ...
    def take_challenge(
        self, handle_hash: str, *, purpose: str, now: float
    ) -> tuple[int | None, str] | None:
        """(user id, challenge) of an unexpired challenge, deleting it; None otherwise."""
        ...


@dataclass(frozen=True)
class Ceremony:
    """What the browser gets: the handle to send back and the options for navigator.credentials."""

    handle: str
    options: dict[str, Any]


@dataclass(frozen=True)
class PasskeyUse:
    user_id: int
    user_verified: bool


class PasskeyFailed(Exception):
    """The authenticator's answer was not accepted (the reason is audited, not shown)."""


class Passkeys:
    def __init__(
        self,
        store: PasskeyStore,
        *,
        issuer: str,
        rp_name: str,
        audit: Auditor,
        clock: Clock,
        uow: UnitOfWork,
    ) -> None:
        parts = urlsplit(issuer)
        # A passkey added or removed commits with its event (core/transactions.py).
        self._uow = uow
        self._store = store
        self.rp_id = parts.hostname or "localhost"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._rp_name = rp_name
        self._audit = audit
        self._clock = clock

    # ------------------------------------------------------------------ registration

    def begin_registration(self, user: User) -> Ceremony:
        from webauthn import generate_registration_options
        from webauthn.helpers import base64url_to_bytes
        from webauthn.helpers.structs import (
            AuthenticatorSelectionCriteria,
            PublicKeyCredentialDescriptor,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

        existing = self._store.passkeys(user.id)
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self._rp_name,
            user_name=user.username,
            user_id=user.sub.encode(),
            user_display_name=user.display_name or user.username,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id))
                for p in existing
            ],
        )
        return self._ceremony("register", user.id, options)

    def finish_registration(
        self, user: User, handle: str, response: str, *, name: str, ctx: RequestContext | None
    ) -> bool:
        from webauthn import verify_registration_response
        from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
        from webauthn.helpers.exceptions import WebAuthnException

        taken = self._take(handle, "register")
        if taken is None or taken[0] != user.id or len(response) > MAX_RESPONSE:
            self._failed(user.sub, "expired_challenge", ctx, ceremony="register")
            return False
        try:
            verified = verify_registration_response(
                credential=response,
                expected_challenge=base64url_to_bytes(taken[1]),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError):
            self._failed(user.sub, "bad_attestation", ctx, ceremony="register")
            return False
        credential_id = bytes_to_base64url(verified.credential_id)
        if self._store.passkey_by_credential(credential_id) is not None:
            self._failed(user.sub, "already_registered", ctx, ceremony="register")
            return False
        with self._uow.atomic() as tx:
            self._store.add_passkey(
                user.id,
                credential_id=credential_id,
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                name=(name.strip() or "passkey")[:MAX_NAME],
                now=self._clock.now(),
            )
            tx.record(
                EventType.MFA_ENROLLED, actor=Actor("user", user.sub), target=user.sub,
                details={"method": "passkey"}, ctx=ctx,
            )  # fmt: skip
        return True

    def remove(self, user: User, passkey_id: int, *, ctx: RequestContext | None) -> bool:
        with self._uow.atomic() as tx:
            removed = self._store.remove_passkey(user.id, passkey_id)
            if removed:
                tx.record(
                    EventType.MFA_REMOVED, actor=Actor("user", user.sub), target=user.sub,
                    details={"method": "passkey"}, ctx=ctx,
                )  # fmt: skip
        return removed

    # ------------------------------------------------------------------ authentication

    def begin_authentication(self, user_id: int | None) -> Ceremony:
        """For one person (second factor: their credentials are listed) or for whoever the
        authenticator holds a passkey for (passwordless: user verification required)."""
        from webauthn import generate_authentication_options
        from webauthn.helpers import base64url_to_bytes
        from webauthn.helpers.structs import (
            PublicKeyCredentialDescriptor,
            UserVerificationRequirement,
        )

        allow = (
            [
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id))
                for p in self._store.passkeys(user_id)
            ]
            if user_id is not None
            else None
        )
        options = generate_authentication_options(
            rp_id=self.rp_id,
            allow_credentials=allow,
            user_verification=(
                UserVerificationRequirement.PREFERRED
                if user_id is not None
                else UserVerificationRequirement.REQUIRED
            ),
        )
        purpose = "second_factor" if user_id is not None else "passwordless"
        return self._ceremony(purpose, user_id, options)

    def finish_authentication(
        self, handle: str, response: str, *, user_id: int | None, ctx: RequestContext | None
    ) -> PasskeyUse | None:
        """The person the authenticator proved, or None. For a second factor `user_id` is the
        person who passed the password, and the credential must be theirs."""
        from webauthn import verify_authentication_response
        from webauthn.helpers import base64url_to_bytes
        from webauthn.helpers.exceptions import WebAuthnException

        purpose = "second_factor" if user_id is not None else "passwordless"
        taken = self._take(handle, purpose)
        if taken is None or taken[0] != user_id or len(response) > MAX_RESPONSE:
            self._failed(None, "expired_challenge", ctx, ceremony=purpose)
            return None
        passkey = self._store.passkey_by_credential(_credential_id(response))
        if passkey is None or (user_id is not None and passkey.user_id != user_id):
            self._failed(None, "unknown_credential", ctx, ceremony=purpose)
            return None
        try:
            verified = verify_authentication_response(
                credential=response,
                expected_challenge=base64url_to_bytes(taken[1]),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=passkey.public_key,
                credential_current_sign_count=passkey.sign_count,
                require_user_verification=user_id is None,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError):
            self._failed(None, "bad_assertion", ctx, ceremony=purpose)
            return None
        self._store.record_passkey_use(
            passkey.credential_id, verified.new_sign_count, self._clock.now()
        )
        return PasskeyUse(user_id=passkey.user_id, user_verified=verified.user_verified)

    # ------------------------------------------------------------------ helpers

    def _ceremony(self, purpose: str, user_id: int | None, options: Any) -> Ceremony:
        from webauthn import options_to_json
        from webauthn.helpers import bytes_to_base64url

        handle = new_token(24)
        self._store.save_challenge(
            sha256_hex(handle),
            purpose=purpose,
            user_id=user_id,
            challenge=bytes_to_base64url(options.challenge),
            expires_at=self._clock.now() + CHALLENGE_TTL,
        )
        return Ceremony(handle=handle, options=json.loads(options_to_json(options)))

    def _take(self, handle: str, purpose: str) -> tuple[int | None, str] | None:
        if not handle or len(handle) > 100:
            return None
        return self._store.take_challenge(
            sha256_hex(handle), purpose=purpose, now=self._clock.now()
        )

    def _failed(
        self, target: str | None, reason: str, ctx: RequestContext | None, *, ceremony: str
    ) -> None:
        self._audit.record(
            EventType.MFA_FAILED, actor=Actor("user", None), target=target,
            details={"method": "passkey", "ceremony": ceremony, "reason": reason},
            outcome="failure", ctx=ctx,
        )  # fmt: skip


def _credential_id(response: str) -> str:
    try:
        data = json.loads(response)
    except ValueError:
        return ""
    value = data.get("id") if isinstance(data, Mapping) else None
    return value if isinstance(value, str) and len(value) <= 1400 else ""

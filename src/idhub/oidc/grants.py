"""The token-endpoint grants on authlib's grant classes.

authlib validates the protocol (client authentication, grant-type permission, code/redirect
binding, PKCE through `CodeChallenge`); idhub's storage and tokens come in through the hooks it
leaves open, and each grant's `create_token_response` issues through `TokenMinter`
(oidc/minter.py), which also writes the audit record: when that write fails the request fails
(503) and no token leaves.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc7636 import CodeChallenge

from idhub.core.audit import EventType, RequestContext
from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.core.crypto import sha256_hex
from idhub.core.identity import User
from idhub.core.token_storage import CodeRecord, RefreshFamily, TokenStorage
from idhub.oidc import grant_batch
from idhub.oidc.client_auth import ALL_METHODS, CONFIDENTIAL_METHODS
from idhub.oidc.client_credentials import issue_service_token
from idhub.oidc.minter import TokenMinter, issued_details, token_body
from idhub.oidc.protocol_errors import require_param
from idhub.oidc.tokens import AccessTokens


class GrantSupport:
    """What idhub's grants read from the server authlib hands them (see `AuthlibServer`)."""

    server: Any
    request: Any

    @property
    def minter(self) -> TokenMinter:
        minter: TokenMinter = self.server.minter
        return minter

    @property
    def tokens(self) -> TokenStorage:
        tokens: TokenStorage = self.server.tokens
        return tokens

    @property
    def access_tokens(self) -> AccessTokens:
        access_tokens: AccessTokens = self.server.access_tokens
        return access_tokens

    @property
    def clock(self) -> Clock:
        clock: Clock = self.server.clock
        return clock

    @property
    def audit_ctx(self) -> RequestContext | None:
        ctx: RequestContext | None = getattr(self.request, "idhub_ctx", None)
        return ctx

    def _write_section(self) -> AbstractContextManager[Any]:
        """The transaction a grant's changes and its event go in: a unit of work of its own,
        or a savepoint of the one a batch's grants share (oidc/grant_batch.py)."""
        if grant_batch.sharing_unit():
            return self.minter.nested()
        return self.minter.atomic()

    def _answer(self, section: grant_batch.Section) -> dict[str, Any]:
        """What `section` (the grant's write section) answers with, run now; or, while a
        batch collects write sections, left on the request for the batch to run in its
        shared unit of work, the body returned here being a placeholder never sent."""
        if grant_batch.deferring():
            self.request.idhub_deferred = section
            return {}
        return section()


# ---------------------------------------------------------------- authorization code


def _live(user: User | None) -> User:
    """The user a grant mints for, read with the grant itself; `InvalidGrantError` once they
    are gone or disabled (what `TokenMinter.active_user` answers)."""
    if user is None or user.disabled:
        raise InvalidGrantError("the user of this grant no longer exists or is disabled")
    return user


class _Code:
    """authlib's AuthorizationCodeMixin over a code row, with the user it was issued to (read
    in the same statement)."""

    def __init__(self, record: CodeRecord, user: User | None) -> None:
        self.record = record
        self.user = user

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only; required (verifier present) for public clients."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib reads this list

    def get_authorization_code_challenge(self, authorization_code: _Code) -> str | None:
        return authorization_code.record.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: _Code) -> str | None:
        return authorization_code.record.code_challenge_method


@dataclass(frozen=True)
class _Signed:
    """What a code exchange signed before its write section."""

    audience: str
    token: str
    claims: dict[str, Any]
    id_token: str | None
    refresh: tuple[str, str, float] | None  # (token, hash, expires_at) if the client refreshes


class CodeGrant(GrantSupport, AuthorizationCodeGrant):  # type: ignore[misc]
    """The code is looked at during authlib's validation and used up in
    `create_token_response`, in one transaction with what its use starts (the refresh
    family, the access token's record) and the `token.issued` event."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def query_authorization_code(self, code: str, client: Any) -> _Code | None:
        status, record, user = self.tokens.find_code_and_user(sha256_hex(code), self.clock.now())
        if record is None or record.client_id != client.client_id:
            raise InvalidGrantError("the authorization code is not valid")
        if status == "used":
            self._code_reused(record)
        if status == "expired":
            raise InvalidGrantError("the authorization code has expired")
        return _Code(record, user)

    def _code_reused(self, record: CodeRecord) -> None:
        # RFC 6749 4.1.2: a code used twice revokes what it granted: the refresh family it
        # started and every access token it (or that family) produced.
        now = self.clock.now()
        self.tokens.revoke_family(record.code_hash, now, "code_reuse")
        self.tokens.revoke_grant_tokens(record.code_hash, now=now)
        self.request.idhub_reason = "code_reuse"
        raise InvalidGrantError("the authorization code was already used")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        minter = self.minter
        client: Client = self.request.client.client
        code: _Code = self.request.authorization_code
        record = code.record
        user = _live(code.user)
        scopes = record.scope.split()
        audience = client.resolve_audience(record.resource) or client.audience
        # Signed before the transaction, so no lock waits on the signatures; if the code
        # turns out to be used up they are thrown away unseen.
        token, claims = minter.user_access_token(
            client, user, audience=audience, scopes=scopes, auth_time=int(record.auth_time)
        )
        id_token = None
        if "openid" in scopes:
            id_token = minter.id_token(
                client,
                user,
                scopes,
                access_token=token,
                nonce=record.nonce,
                auth_time=record.auth_time,
                acr=record.acr,
                amr=record.amr,
                sid=record.sid,
            )
        # The refresh token too (random bytes and a keyed hash): nothing of it needs the lock.
        refresh = minter.new_refresh_token() if client.allows_grant("refresh_token") else None
        signed = _Signed(audience, token, claims, id_token, refresh)
        body = self._answer(lambda: self._redeem(client, record, user, signed))
        return 200, body, default_json_headers

    def _redeem(
        self, client: Client, record: CodeRecord, user: User, signed: _Signed
    ) -> dict[str, Any]:
        """The write section: uses the code up and starts what it grants, with its event."""
        token, claims = signed.token, signed.claims
        refresh = None
        with self._write_section():
            status = self.tokens.consume_code(record.code_hash, self.clock.now())
            if status == "ok":
                refresh = self._start_use(client, record, signed, user.id)
                self.minter.record_issuance(
                    EventType.TOKEN_ISSUED,
                    client,
                    target=user.sub,
                    ctx=self.audit_ctx,
                    details=issued_details(self.GRANT_TYPE, claims, refresh_token=bool(refresh)),
                )
        if status == "used":
            self._code_reused(record)
        if status != "ok":
            raise InvalidGrantError(
                "the authorization code has expired"
                if status == "expired"
                else "the authorization code is not valid"
            )
        return token_body(token, claims, refresh=refresh, id_token=signed.id_token)

    def _start_use(
        self, client: Client, record: CodeRecord, signed: _Signed, user_id: int
    ) -> str | None:
        """Records the access token against the grant and starts its refresh family (inside
        the code's transaction); returns the refresh token, if the client may refresh."""
        claims, audience = signed.claims, signed.audience
        self.tokens.record_grant_token(
            record.code_hash, str(claims["jti"]), expires_at=float(claims["exp"])
        )
        if signed.refresh is None:
            return None
        refresh, refresh_hash, expires_at = signed.refresh
        self.tokens.start_family(
            RefreshFamily(
                id=record.code_hash,
                client_id=client.client_id,
                user_id=user_id,
                sid=record.sid,
                scope=record.scope,
                audience=audience,
                auth_time=record.auth_time,
                revoked_at=None,
            ),
            token_hash=refresh_hash,
            issued_at=self.clock.now(),
            expires_at=expires_at,
        )
        return refresh


# ---------------------------------------------------------------- refresh token


@dataclass(frozen=True)
class _Early:
    """What the refresh grant read (and signed) before its transaction."""

    family: RefreshFamily
    user: User | None
    signed: tuple[str, dict[str, Any]] | None


@dataclass(frozen=True)
class _Rotating:
    """What a refresh prepared before its write section."""

    old_hash: str
    refresh: str
    new_hash: str
    expires_at: float
    requested: list[str]
    early: _Early | None
    sealed: bytes | None  # the new token sealed for a retry within the grace window


class RotatingRefreshGrant(GrantSupport, RefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation on every use; a rotated token presented again revokes its family,
    except as a retry within `[tokens] refresh_reuse_grace` (docs/oidc.md).

    Lookup, reuse detection, scope check and rotation happen in one statement sequence
    (`RefreshStorage.rotate`) inside one transaction with the new access token's record and
    the audit event, so two racing requests with one token cannot both rotate it, and a
    rotation stands exactly when its `token.refreshed` event does.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def validate_token_request(self) -> None:
        client = self._validate_request_client()
        self.request.client = client
        self.request.refresh_token = require_param(self.request.form, "refresh_token")

    def _record_reuse(self, minter: TokenMinter, family: RefreshFamily) -> None:
        """An already-rotated token came back: the family is being revoked; record it."""
        client = self.request.client.client
        minter.record_issuance(
            EventType.REFRESH_REUSE_DETECTED,
            client,
            target=str(family.user_id),
            outcome="denied",
            ctx=self.audit_ctx,
            details={"family": family.id[:12], "client_id": family.client_id},
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        minter = self.minter
        client: Client = self.request.client.client
        requested = (self.request.payload.scope or "").split()
        refresh, new_hash, expires_at = minter.new_refresh_token()
        old_hash = minter.refresh_hash(self.request.refresh_token)
        # Signed before the transaction (as the code grant does), for the family the token
        # belongs to now: the rotation runs while every other writer waits (SQLite's write
        # lock; a group's turn), so the user lookup and the signature stay out of it. The
        # rotation decides; a family that is not the one signed for is signed again inside.
        early = self._sign_early(client, old_hash, requested)
        # Sealed here too (an AES-GCM encryption), not inside the write section.
        sealed = minter.seal_successor(refresh, rotated_hash=old_hash)
        rotating = _Rotating(old_hash, refresh, new_hash, expires_at, requested, early, sealed)
        return 200, self._answer(lambda: self._rotate(client, rotating)), default_json_headers

    def _rotate(self, client: Client, rotating: _Rotating) -> dict[str, Any]:
        """The write section: rotates the token (or detects its reuse) and records the new
        access token with its event."""
        minter, early, requested = self.minter, rotating.early, rotating.requested
        old_hash, refresh = rotating.old_hash, rotating.refresh
        with self._write_section():
            now = self.clock.now()
            rotation = self.tokens.rotate(
                old_hash,
                new_hash=rotating.new_hash,
                now=now,
                expires_at=rotating.expires_at,
                client_id=client.client_id,
                scope=requested,
                sealed=rotating.sealed,
                grace=minter.refresh_grace,
                # Read with its user a moment ago: a rotation that wins in it needs no
                # second read of the family inside the section every other writer waits for.
                family=early.family if early is not None else None,
            )
            family = rotation.family
            if rotation.status == "reused" and family is not None:
                # Either holder may be the thief (RFC 9700 4.14.2): the access tokens the
                # family produced (the code's and every refresh's) are revoked with it, in the
                # same transaction as the family and its alarm.
                self.tokens.revoke_grant_tokens(family.id, now=now)
                self._record_reuse(minter, family)
            if rotation.status in ("ok", "grace") and family is not None:
                if rotation.successor is not None:
                    # A retry within the grace window: the same successor as the first answer.
                    refresh = minter.open_successor(rotation.successor, rotated_hash=old_hash)
                if early is not None and early.family == family:
                    # Read with the family a moment ago: a user disabled since the last
                    # token is refused now (raised here, the rotation rolls back).
                    user = _live(early.user)
                    token, claims = early.signed or self._sign(client, family, requested, user)[1:]
                else:
                    user, token, claims = self._sign(client, family, requested)
                self._account(client, family, user, token, claims, grace=rotation.successor)
        if rotation.status == "reused":
            self.request.idhub_reason = "refresh_token_reuse"
            raise InvalidGrantError("the refresh token was already used; the grant is revoked")
        if rotation.status == "invalid_scope":
            raise InvalidScopeError("the scope exceeds what was originally granted")
        if rotation.status not in ("ok", "grace"):
            raise InvalidGrantError(
                "the refresh token is not valid"
                if rotation.status == "unknown"
                else f"the refresh token is {rotation.status}"
            )
        # No new ID token: OIDC Core 12.2 lets a refresh response omit it, and an RS256
        # signature would double the cost of every refresh.
        return token_body(token, claims, refresh=refresh)

    def _sign_early(self, client: Client, token_hash: str, requested: list[str]) -> _Early | None:
        """The family `token_hash` belongs to and its user, read together, with the access
        token signed when it is a live family of this client whose user is active; None when
        the family is not this client's live one (the rotation then says why)."""
        found = self.tokens.find_refresh_and_user(token_hash)
        if found is None:
            return None
        family, user = found[0], found[3]
        if family.client_id != client.client_id or family.revoked_at is not None:
            return None
        if requested and not set(requested) <= set(family.scope.split()):
            return None  # invalid_scope: the rotation answers it
        if user is None or user.disabled:
            return _Early(family, user, None)  # refused inside, after reuse detection
        _, token, claims = self._sign(client, family, requested, user)
        return _Early(family, user, (token, claims))

    def _sign(
        self, client: Client, family: RefreshFamily, requested: list[str], user: User | None = None
    ) -> tuple[User, str, dict[str, Any]]:
        minter = self.minter
        if user is None:
            user = minter.active_user(family.user_id)
        token, claims = minter.user_access_token(
            client,
            user,
            audience=family.audience or client.audience,
            scopes=requested or family.scope.split(),
            auth_time=int(family.auth_time) if family.auth_time else None,
        )
        return user, token, claims

    def _account(
        self,
        client: Client,
        family: RefreshFamily,
        user: User,
        token: str,
        claims: dict[str, Any],
        *,
        grace: bytes | None,
    ) -> None:
        """The new access token's record against the grant and the `token.refreshed` event
        (inside the rotation's transaction)."""
        self.tokens.record_grant_token(
            family.id, str(claims["jti"]), expires_at=float(claims["exp"])
        )
        more: dict[str, Any] = {"family": family.id[:12]}
        if grace is not None:
            more["grace_retry"] = True
        self.minter.record_issuance(
            EventType.TOKEN_REFRESHED,
            client,
            target=user.sub,
            ctx=self.audit_ctx,
            details=issued_details(self.GRANT_TYPE, claims, **more),
        )


# ---------------------------------------------------------------- client credentials


class ServiceGrant(GrantSupport, ClientCredentialsGrant):  # type: ignore[misc]
    """authlib's client-credentials grant; what it issues is `issue_service_token`, shared with
    the lean path (oidc/client_credentials.py) that answers most of these requests."""

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: Client = self.request.client.client
        body = issue_service_token(self.minter, client, self.request.form, self.audit_ctx)
        return 200, body, default_json_headers

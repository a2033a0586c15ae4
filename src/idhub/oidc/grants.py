"""The token-endpoint grants on authlib's grant classes, and the issuer they share.

authlib validates the protocol (client authentication, grant-type permission, code/redirect
binding, PKCE through `CodeChallenge`); idhub's storage and tokens come in through the hooks it
leaves open, and each grant's `create_token_response` issues through `Issuer`, which also
writes the audit record: when that write fails the request fails (503) and no token leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc7636 import CodeChallenge

from idhub.adapters.token_store import CodeRecord, Family, SqlTokenStore
from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.claims import RoleSource, role_claims, user_claims
from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, new_token, sha256_hex
from idhub.core.identity import IdentityStore, User
from idhub.errors import AuditError
from idhub.oidc.client_auth import ALL_METHODS, CONFIDENTIAL_METHODS
from idhub.oidc.tokens import AccessTokens, IdTokens

USER_CACHE_SECONDS = 2.0


class TemporarilyUnavailable(OAuth2Error):  # type: ignore[misc]
    error = "temporarily_unavailable"
    status_code = 503


class InvalidTarget(OAuth2Error):  # type: ignore[misc]
    """RFC 8707: the requested resource is unknown or not allowed for this client."""

    error = "invalid_target"


@dataclass
class Issuer:
    """What every grant needs to mint tokens and account for them."""

    access_tokens: AccessTokens
    id_tokens: IdTokens
    store: SqlTokenStore
    identity: IdentityStore
    audit: Auditor
    clock: Clock
    refresh_hasher: KeyedHasher
    refresh_ttl: int
    domains: tuple[str, ...]
    roles: Callable[[], RoleSource | None]
    _users: dict[int, tuple[float, User]] = field(default_factory=dict)

    def user_access_token(
        self, client: Client, user: User, *, audience: str, scopes: Iterable[str], **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        claims = role_claims(user, audience, roles=self.roles(), domains=self.domains)
        claims.update({k: v for k, v in extra.items() if v is not None and k != "ttl"})
        return self.access_tokens.issue(
            client,
            sub=user.sub,
            audience=audience,
            scopes=scopes,
            extra=claims,
            ttl=extra.get("ttl"),
        )

    def id_token(
        self,
        client: Client,
        user: User,
        scopes: Iterable[str],
        *,
        access_token: str,
        nonce: str | None = None,
        auth_time: float | None = None,
        acr: str | None = None,
        amr: list[str] | None = None,
        sid: str | None = None,
    ) -> str:
        claims = user_claims(user, scopes, groups=self.identity.user_groups)
        return self.id_tokens.sign_id_token(
            client,
            claims=claims,
            nonce=nonce,
            auth_time=auth_time,
            acr=acr,
            amr=amr,
            sid=sid,
            access_token=access_token,
        )

    def new_refresh_token(self) -> tuple[str, str, float]:
        """(token, keyed hash, expires_at) for a fresh refresh token."""
        token = new_token(32)
        return token, self.refresh_hasher.hash(token), self.clock.now() + self.refresh_ttl

    def user(self, user_id: int) -> User:
        # A refresh needs the user for claims and roles; a few seconds' memory of the row
        # saves a join per refresh. Disabling a user also revokes their refresh families
        # (contract 5), so a stale entry never outlives the grant it serves.
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and now - cached[0] < USER_CACHE_SECONDS:
            user: User | None = cached[1]
        else:
            user = self.identity.get_user(user_id)
            if len(self._users) > 10_000:
                self._users.clear()
            if user is not None:
                self._users[user_id] = (now, user)
        if user is None or user.disabled:
            raise InvalidGrantError("the user of this grant no longer exists or is disabled")
        return user

    def record(
        self,
        event: EventType,
        client: Client,
        *,
        target: str | None,
        details: dict[str, Any],
        ctx: RequestContext | None,
        outcome: str = "success",
    ) -> None:
        try:
            self.audit.record(
                event,
                actor=Actor("client", client.client_id),
                target=target,
                outcome=outcome,  # type: ignore[arg-type]
                details=details,
                ctx=ctx,
            )
        except AuditError:
            raise TemporarilyUnavailable(
                "the audit trail cannot be written; no token was issued, try again later"
            ) from None

    @staticmethod
    def body(
        token: str,
        claims: dict[str, Any],
        *,
        refresh: str | None = None,
        id_token: str | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(claims["exp"] - claims["iat"]),
            "scope": claims["scope"],
        }
        if refresh:
            out["refresh_token"] = refresh
        if id_token:
            out["id_token"] = id_token
        return out


def issued_details(grant_type: str, claims: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "grant_type": grant_type,
        "client_id": claims["client_id"],
        "audience": claims["aud"],
        "scope": claims["scope"],
        "jti": claims["jti"],
        **more,
    }


def _ctx(grant: Any) -> RequestContext | None:
    return getattr(grant.request, "idhub_ctx", None)


def _issuer(grant: Any) -> Issuer:
    issuer: Issuer = grant.server.issuer
    return issuer


# ---------------------------------------------------------------- authorization code


class _Code:
    """authlib's AuthorizationCodeMixin over a consumed code row."""

    def __init__(self, record: CodeRecord) -> None:
        self.record = record

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


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def query_authorization_code(self, code: str, client: Any) -> _Code | None:
        issuer = _issuer(self)
        status, record = issuer.store.consume_code(sha256_hex(code), issuer.clock.now())
        if record is None or record.client_id != client.client_id:
            raise InvalidGrantError("the authorization code is not valid")
        if status == "used":
            # RFC 6749 4.1.2: a code used twice revokes what it granted.
            issuer.store.revoke_family(record.code_hash, issuer.clock.now(), "code_reuse")
            self.request.idhub_reason = "code_reuse"
            raise InvalidGrantError("the authorization code was already used")
        if status == "expired":
            raise InvalidGrantError("the authorization code has expired")
        return _Code(record)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        issuer = _issuer(self)
        client: Client = self.request.client.client
        record: CodeRecord = self.request.authorization_code.record
        user = issuer.user(record.user_id)
        scopes = record.scope.split()
        audience = client.resolve_audience(record.resource) or client.audience
        token, claims = issuer.user_access_token(
            client, user, audience=audience, scopes=scopes, auth_time=int(record.auth_time)
        )
        refresh = None
        if client.allows_grant("refresh_token"):
            refresh, refresh_hash, expires_at = issuer.new_refresh_token()
            issuer.store.start_family(
                Family(
                    id=record.code_hash,
                    client_id=client.client_id,
                    user_id=user.id,
                    sid=record.sid,
                    scope=record.scope,
                    audience=audience,
                    auth_time=record.auth_time,
                    revoked_at=None,
                ),
                token_hash=refresh_hash,
                issued_at=issuer.clock.now(),
                expires_at=expires_at,
            )
        id_token = None
        if "openid" in scopes:
            id_token = issuer.id_token(
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
        issuer.record(
            EventType.TOKEN_ISSUED,
            client,
            target=user.sub,
            ctx=_ctx(self),
            details=issued_details(self.GRANT_TYPE, claims, refresh_token=bool(refresh)),
        )
        body = issuer.body(token, claims, refresh=refresh, id_token=id_token)
        return 200, body, default_json_headers


# ---------------------------------------------------------------- refresh token


class RotatingRefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation on every use; a rotated token presented again revokes its family.

    Lookup, reuse detection, scope check and rotation happen in one transaction
    (`SqlTokenStore.rotate`), so two racing requests with one token cannot both succeed.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def validate_token_request(self) -> None:
        client = self._validate_request_client()
        self.request.client = client
        self.request.refresh_token = require_param(self.request.form, "refresh_token")

    def _reuse(self, issuer: Issuer, family: Family) -> None:
        """An already-rotated token came back: the family is revoked; record it, refuse."""
        client = self.request.client.client
        issuer.record(
            EventType.REFRESH_REUSE_DETECTED,
            client,
            target=str(family.user_id),
            outcome="denied",
            ctx=_ctx(self),
            details={"family": family.id[:12], "client_id": family.client_id},
        )
        self.request.idhub_reason = "refresh_token_reuse"
        raise InvalidGrantError("the refresh token was already used; the grant is revoked")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        issuer = _issuer(self)
        client: Client = self.request.client.client
        requested = (self.request.payload.scope or "").split()
        refresh, new_hash, expires_at = issuer.new_refresh_token()
        status, family = issuer.store.rotate(
            issuer.refresh_hasher.hash(self.request.refresh_token),
            new_hash=new_hash,
            now=issuer.clock.now(),
            expires_at=expires_at,
            client_id=client.client_id,
            scope=requested,
        )
        if status == "reused" and family is not None:
            self._reuse(issuer, family)
        if status == "invalid_scope":
            raise InvalidScopeError("the scope exceeds what was originally granted")
        if status != "ok" or family is None:
            raise InvalidGrantError(
                "the refresh token is not valid"
                if status == "unknown"
                else f"the refresh token is {status}"
            )
        user = issuer.user(family.user_id)
        scopes = requested or family.scope.split()
        audience = family.audience or client.audience
        token, claims = issuer.user_access_token(
            client,
            user,
            audience=audience,
            scopes=scopes,
            auth_time=int(family.auth_time) if family.auth_time else None,
        )
        issuer.record(
            EventType.TOKEN_REFRESHED,
            client,
            target=user.sub,
            ctx=_ctx(self),
            details=issued_details(self.GRANT_TYPE, claims, family=family.id[:12]),
        )
        # No new ID token: OIDC Core 12.2 lets a refresh response omit it, and an RS256
        # signature would double the cost of every refresh.
        body = issuer.body(token, claims, refresh=refresh)
        return 200, body, default_json_headers


# ---------------------------------------------------------------- client credentials


class ServiceGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        issuer = _issuer(self)
        client: Client = self.request.client.client
        form = self.request.form
        audience = client.resolve_audience(form.get("resource") or form.get("audience"))
        if audience is None:
            raise InvalidTarget("the requested resource is not allowed for this client")
        requested = (self.request.payload.scope or "").split()
        if requested:
            scopes = client.allowed_scope(requested)
            if len(scopes) != len(set(requested)):
                raise InvalidScopeError("the client may not request some of these scopes")
        else:
            # Without a scope the client gets what it is registered for, minus sign-in scopes.
            user_only = {"openid", "profile", "email", "phone", "groups", "offline_access"}
            scopes = [s for s in client.scopes if s not in user_only]
        token, claims = issuer.access_tokens.issue(
            client, sub=client.client_id, audience=audience, scopes=scopes
        )
        issuer.record(
            EventType.TOKEN_ISSUED,
            client,
            target=client.client_id,
            ctx=_ctx(self),
            details=issued_details(self.GRANT_TYPE, claims),
        )
        return 200, issuer.body(token, claims), default_json_headers


def require_param(form: Any, name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequestError(f"missing '{name}' parameter")
    return str(value)

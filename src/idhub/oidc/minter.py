"""What every grant shares: minting tokens, refresh-token values, users, and the audit record
that must be written before any token leaves (its failure is a 503 `temporarily_unavailable`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, OAuth2Error

from idhub.adapters.token_store import SqlTokenStore
from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.claims import RoleSource, role_claims, user_claims
from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, new_token
from idhub.core.identity import IdentityStore, User
from idhub.errors import AuditError
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


def require_param(form: Any, name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequestError(f"missing '{name}' parameter")
    return str(value)

"""`TokenMinter`: mints the access, ID and refresh tokens a grant answers with, and writes the
issuance audit record that must succeed before any of them leaves (its failure is a 503
`temporarily_unavailable`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.claims import RoleSource, record_claims, role_claims, user_claims
from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, Sealer, new_token
from idhub.core.identity import IdentityStore, User
from idhub.core.transactions import Transaction, UnitOfWork
from idhub.errors import AuditError
from idhub.oidc.protocol_errors import TemporarilyUnavailable
from idhub.oidc.tokens import AccessTokens, IdTokens

USER_CACHE_SECONDS = 2.0


class TokenMinter:
    def __init__(
        self,
        *,
        access_tokens: AccessTokens,
        id_tokens: IdTokens,
        identity: IdentityStore,
        audit: Auditor,
        clock: Clock,
        refresh_hasher: KeyedHasher,
        refresh_ttl: int,
        domains: tuple[str, ...],
        roles: Callable[[], RoleSource | None],
        uow: UnitOfWork,
        refresh_sealer: Sealer,
        refresh_grace: float = 0.0,
    ) -> None:
        self._access_tokens = access_tokens
        self._id_tokens = id_tokens
        self._identity = identity
        self._audit = audit
        self._clock = clock
        self._refresh_hasher = refresh_hasher
        self._refresh_ttl = refresh_ttl
        self._domains = domains
        # Resolved per token: the authorization service may be built after the minter.
        self._roles = roles
        self._users: dict[int, tuple[float, User]] = {}
        self._uow = uow
        self._refresh_sealer = refresh_sealer
        self.refresh_grace = refresh_grace

    # ------------------------------------------------------------------ tokens

    def user_access_token(
        self, client: Client, user: User, *, audience: str, scopes: Iterable[str], **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """An access token for `user` carrying their roles, username and department at a
        policy domain's `audience` (`core.claims.record_claims`); `extra` claims
        (None values dropped) and an optional `ttl`."""
        claims = record_claims(user, audience, domains=self._domains)
        claims.update(self.role_claims(user, audience))
        claims.update({k: v for k, v in extra.items() if v is not None and k != "ttl"})
        return self._access_tokens.issue(
            client,
            sub=user.sub,
            audience=audience,
            scopes=scopes,
            extra=claims,
            ttl=extra.get("ttl"),
        )

    def service_access_token(
        self,
        client: Client,
        *,
        sub: str,
        audience: str,
        scopes: Iterable[str],
        extra: dict[str, Any] | None = None,
        ttl: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """An access token with no user behind it (client credentials, passed-along service
        tokens): no roles, no user claims."""
        return self._access_tokens.issue(
            client, sub=sub, audience=audience, scopes=scopes, extra=extra, ttl=ttl
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
        claims = user_claims(user, scopes, groups=self._identity.user_groups)
        return self._id_tokens.sign_id_token(
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
        return token, self.refresh_hash(token), self._clock.now() + self._refresh_ttl

    def refresh_hash(self, token: str) -> str:
        """The keyed hash a refresh token is stored and looked up by."""
        return self._refresh_hasher.hash(token)

    def seal_successor(self, successor: str, *, rotated_hash: str) -> bytes | None:
        """The new refresh token sealed for the row of the one it replaces, so a retry within
        the grace window gets it back (None when the window is off: nothing is kept)."""
        if self.refresh_grace <= 0:
            return None
        return self._refresh_sealer.seal(successor.encode("ascii"), rotated_hash.encode("ascii"))

    def open_successor(self, sealed: bytes, *, rotated_hash: str) -> str:
        return self._refresh_sealer.open(sealed, rotated_hash.encode("ascii")).decode("ascii")

    def role_claims(self, user: User, audience: str) -> dict[str, Any]:
        return role_claims(user, audience, roles=self._roles(), domains=self._domains)

    def userinfo_claims(self, user: User, scopes: Iterable[str], audience: Any) -> dict[str, Any]:
        """What `/userinfo` answers: the scoped user claims plus roles at a single audience."""
        info = user_claims(user, scopes, groups=self._identity.user_groups)
        if isinstance(audience, str):
            info.update(self.role_claims(user, audience))
        return info

    # ------------------------------------------------------------------ whom they are for

    def active_user(self, user_id: int) -> User:
        """The user a grant mints for; `InvalidGrantError` once they are gone or disabled."""
        # A refresh needs the user for claims and roles; a few seconds' memory of the row
        # saves a join per refresh. Disabling a user also revokes their refresh families
        # (contract 5), so a stale entry never outlives the grant it serves.
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and now - cached[0] < USER_CACHE_SECONDS:
            user: User | None = cached[1]
        else:
            user = self._identity.get_user(user_id)
            if len(self._users) > 10_000:
                self._users.clear()
            if user is not None:
                self._users[user_id] = (now, user)
        if user is None or user.disabled:
            raise InvalidGrantError("the user of this grant no longer exists or is disabled")
        return user

    def user_by_sub(self, sub: str) -> User | None:
        return self._identity.get_user_by_sub(sub)

    # ------------------------------------------------------------------ accounting

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Transaction]:
        """One transaction for a grant's changes and their audit event (core/transactions.py):
        both commit, or neither and the client gets `TemporarilyUnavailable` - no token
        leaves before its event is committed, and no change stands for a token that did not
        leave."""
        try:
            with self._uow.atomic() as tx:
                yield tx
        except AuditError:
            raise TemporarilyUnavailable(
                "the audit trail cannot be written; no token was issued, try again later"
            ) from None

    def nested(self) -> contextlib.AbstractContextManager[None]:
        """Inside `atomic()`: a part of it that rolls back alone (one grant's write section
        among a batch's, oidc/grant_batch.py; `UnitOfWork.nested`)."""
        return self._uow.nested()

    def record_issuance(
        self,
        event: EventType,
        client: Client,
        *,
        target: str | None,
        details: dict[str, Any],
        ctx: RequestContext | None,
        outcome: str = "success",
    ) -> None:
        """Writes the audit record of a grant's outcome; `TemporarilyUnavailable` when it
        cannot be written (then nothing may be issued)."""
        try:
            self._audit.record(
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

    def record_issuances(self, events: Sequence[PendingEvent]) -> None:
        """Commits the events of tokens about to leave, in one append (`record_many`: all or
        none); `TemporarilyUnavailable` when they cannot be written (then none may leave)."""
        try:
            self._audit.record_many(events)
        except AuditError:
            raise TemporarilyUnavailable(
                "the audit trail cannot be written; no token was issued, try again later"
            ) from None


def token_body(
    token: str,
    claims: dict[str, Any],
    *,
    refresh: str | None = None,
    id_token: str | None = None,
) -> dict[str, Any]:
    """The token endpoint's JSON answer (RFC 6749 5.1)."""
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
    """The audit details of an issued token (never the token itself)."""
    return {
        "grant_type": grant_type,
        "client_id": claims["client_id"],
        "audience": claims["aud"],
        "scope": claims["scope"],
        "jti": claims["jti"],
        **more,
    }

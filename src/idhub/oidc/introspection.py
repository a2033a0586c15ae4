"""Introspection (RFC 7662), revocation (RFC 7009), userinfo, and the refresh-family revoker
the logout side uses.

Introspection answers `{"active": false}` for anything revoked, expired, tampered, foreign or
not meant for the asking client, never saying which: the reason goes to the audit log.
"""

from __future__ import annotations

from typing import Any, Protocol

from authlib.consts import default_json_headers

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.core.identity import IdentityStore
from idhub.core.token_storage import RefreshStorage, TokenStorage
from idhub.core.transactions import UnitOfWork
from idhub.oidc.client_auth import AuthlibClient
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData, encode_json
from idhub.oidc.minter import TokenMinter
from idhub.oidc.tokens import AccessTokens, InvalidToken

# Active answers whose encoding is kept (`TokenEndpoints._encoded`), per process.
_ANSWERS_KEPT = 4_096
_CLAIMS_OUT = (
    "scope",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "jti",
    "act",
    "roles",
    "policy_version",
    "auth_time",
)


# An access token's `offline_claims` and whether its `jti` was on the revocation list when
# read for this request (`TokenEndpoints.introspect_for`'s `known`). A plain pair: made on
# every introspection.
KnownAccess = tuple[dict[str, Any], bool]


def _taken_as_access(token: str, hint: str | None) -> bool:
    """Whether introspection and revocation examine `token` as an access token (a compact
    JWS, unless the client hints it is a refresh token) rather than look it up as a refresh
    token."""
    return token.count(".") == 2 and hint != "refresh_token"


class RevocationCheck(Protocol):
    def is_revoked_probing_first(self, jti: str) -> bool: ...


def _json(
    status: int, body: dict[str, Any], extra: list[tuple[str, str]] | None = None
) -> OAuthResponseData:
    return OAuthResponseData(status, [*default_json_headers, *(extra or [])], body)


def _concerns(client: Client, claims: dict[str, Any]) -> bool:
    """A client may learn about tokens issued to it or addressed to it, nothing else."""
    if claims.get("client_id") == client.client_id:
        return True
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    return client.audience in audiences or client.client_id in audiences


class TokenEndpoints:
    def __init__(
        self,
        *,
        access_tokens: AccessTokens,
        revocations: RevocationCheck,
        minter: TokenMinter,
        tokens: TokenStorage,
        identity: IdentityStore,
        audit: Auditor,
        clock: Clock,
        uow: UnitOfWork,
    ) -> None:
        self._uow = uow
        self._access_tokens = access_tokens
        self._revocations = revocations
        self._minter = minter
        self._tokens = tokens
        self._identity = identity
        self._audit = audit
        self._clock = clock
        # jti -> (an active answer, its JSON): `_encoded`.
        self._answers: dict[str, tuple[dict[str, Any], bytes]] = {}

    # ------------------------------------------------------------------ introspection

    def introspect(self, data: OAuthRequestData, wrapper: AuthlibClient) -> OAuthResponseData:
        return self.introspect_for(data, wrapper.client)

    def offline_claims(self, data: OAuthRequestData) -> dict[str, Any] | None:
        """The claims `introspect_for` would examine as an access token's, verified offline
        (form, signature, issuer, time: `AccessTokens.verify_offline`), or None when `data`
        names no such token (none, a refresh token, one that fails the check). Pure CPU on
        the token alone, no database and no client involved: a caller may ask before it has
        authenticated the client, to read the token's revocation with the client's throttle
        counters (oidc/introspection_lean.py), and tells the client nothing by asking."""
        token = data.params.get("token")
        if not token or not _taken_as_access(token, data.params.get("token_type_hint")):
            return None
        try:
            return self._access_tokens.verify_offline(token)
        except InvalidToken:
            return None

    def introspect_for(
        self, data: OAuthRequestData, client: Client, *, known: KnownAccess | None = None
    ) -> OAuthResponseData:
        """The answer to `client`, already authenticated, about the token `data` names.

        `known`: what the caller already read about that token (`offline_claims` of this
        `data`, and its revocation read since), used instead of reading it again."""
        token = data.params.get("token")
        if not token:
            return _json(400, {"error": "invalid_request", "error_description": "missing 'token'"})
        hint = data.params.get("token_type_hint")
        # `known` comes from `offline_claims`, which took the token as an access token
        # already (counting the dots of a long token again is not free).
        if known is not None or _taken_as_access(token, hint):
            result, reason = self._introspect_access(client, token, known)
        else:
            result, reason = self._introspect_refresh(client, token)
        if result is None:
            self._inactive(client, reason, data.ctx)
            return _json(200, {"active": False})
        return OAuthResponseData(200, list(default_json_headers), result, self._encoded(result))

    def _encoded(self, answer: dict[str, Any]) -> bytes:
        """`answer`'s JSON, encoded once per token: a token's active answer is its claims
        (the same for every asker), and a resource server asks about the same token again
        and again; encoding it was about a tenth of an introspection's CPU. Every check
        (expiry, revocation, audience, the client's standing) still runs on every request
        before this; only the encoding of the answer they let through is reused, and only
        for an answer equal to the one encoded (kept under its `jti`, bounded)."""
        jti = answer.get("jti")
        kept = self._answers.get(jti) if isinstance(jti, str) else None
        if kept is not None and kept[0] == answer:
            return kept[1]
        encoded = encode_json(answer)
        if isinstance(jti, str):
            if len(self._answers) >= _ANSWERS_KEPT:
                self._answers.clear()  # strangers' tokens must not grow memory without bound
            self._answers[jti] = (dict(answer), encoded)
        return encoded

    def _introspect_access(
        self, client: Client, token: str, known: KnownAccess | None
    ) -> tuple[dict[str, Any] | None, str]:
        # What `AccessTokens.verify` checks, with the revocation list read through the probe
        # where there is one (oidc/revocations.py): the same rows, without a pool checkout.
        if known is not None:
            claims, revoked = known
        else:
            try:
                claims = self._access_tokens.verify_offline(token)
            except InvalidToken as exc:
                return None, exc.reason
            revoked = self._revocations.is_revoked_probing_first(str(claims["jti"]))
        if revoked:
            return None, "revoked"
        if not _concerns(client, claims):
            return None, "not addressed to the asking client"
        if not self._access_tokens.client_enabled(claims):
            return None, "the token's client is disabled or removed"
        out = {k: claims[k] for k in _CLAIMS_OUT if k in claims}
        out.update(active=True, token_type="Bearer")  # noqa: S106
        return out, ""

    def _introspect_refresh(self, client: Client, token: str) -> tuple[dict[str, Any] | None, str]:
        found = self._tokens.find_refresh(self._minter.refresh_hash(token))
        if found is None:
            return None, "unknown token"
        family, expires_at, rotated_at = found
        if family.client_id != client.client_id:
            return None, "refresh token of another client"
        if family.revoked_at is not None or rotated_at is not None:
            return None, "revoked or rotated refresh token"
        if expires_at <= self._clock.now():
            return None, "expired refresh token"
        user = self._identity.get_user(family.user_id)
        out: dict[str, Any] = {
            "active": True,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "scope": family.scope,
            "exp": int(expires_at),
        }
        if user is not None:
            out["sub"] = user.sub
        return out, ""

    def _inactive(self, client: Client, reason: str, ctx: RequestContext | None) -> None:
        self._audit.record(
            EventType.TOKEN_INTROSPECTED_INACTIVE,
            actor=Actor("client", client.client_id),
            outcome="failure",
            details={"reason": reason},
            ctx=ctx,
        )

    # ------------------------------------------------------------------ revocation

    def revoke(self, data: OAuthRequestData, wrapper: AuthlibClient) -> OAuthResponseData:
        client = wrapper.client
        token = data.params.get("token")
        if not token:
            return _json(400, {"error": "invalid_request", "error_description": "missing 'token'"})
        hint = data.params.get("token_type_hint")
        if hint not in (None, "", "access_token", "refresh_token"):
            return _json(
                400, {"error": "unsupported_token_type", "error_description": "unknown token type"}
            )
        with self._uow.atomic() as tx:
            what = self._revoke_one(client, token, hint)
            if what is not None:
                tx.record(
                    EventType.TOKEN_REVOKED,
                    actor=Actor("client", client.client_id),
                    details=what,
                    ctx=data.ctx,
                )
        # RFC 7009 2.2: the answer is 200 whether or not the token was known or valid.
        return _json(200, {})

    def _revoke_one(self, client: Client, token: str, hint: str | None) -> dict[str, Any] | None:
        """Revokes the token if it is the client's; what was revoked, for the audit event."""
        now = self._clock.now()
        what: dict[str, Any] | None = None
        if _taken_as_access(token, hint):
            try:
                claims = self._access_tokens.verify_offline(token)
            except InvalidToken:
                claims = None
            if claims is not None and claims.get("client_id") == client.client_id:
                self._tokens.revoke_jti(
                    str(claims["jti"]), expires_at=float(claims["exp"]), now=now
                )
                what = {"token_type": "access_token", "jti": claims["jti"]}
        else:
            found = self._tokens.find_refresh(self._minter.refresh_hash(token))
            if found is not None and found[0].client_id == client.client_id:
                self._tokens.revoke_family(found[0].id, now, "revoked_by_client")
                what = {"token_type": "refresh_token", "family": found[0].id[:12]}
        return what

    # ------------------------------------------------------------------ userinfo

    def userinfo(self, bearer_token: str) -> OAuthResponseData:
        def refuse(status: int, error: str, description: str) -> OAuthResponseData:
            challenge = f'Bearer error="{error}", error_description="{description}"'
            return _json(
                status,
                {"error": error, "error_description": description},
                [("WWW-Authenticate", challenge)],
            )

        if not bearer_token:
            return OAuthResponseData(
                401, [("WWW-Authenticate", "Bearer")], {"error": "invalid_token"}
            )
        try:
            claims = self._access_tokens.verify(bearer_token)
        except InvalidToken:
            return refuse(401, "invalid_token", "the access token is not valid")
        scopes = str(claims.get("scope", "")).split()
        if "openid" not in scopes:
            return refuse(403, "insufficient_scope", "the token was not issued with scope openid")
        user = self._identity.get_user_by_sub(str(claims["sub"]))
        if user is None or user.disabled:
            return refuse(401, "invalid_token", "the user of this token is not active")
        return _json(200, self._minter.userinfo_claims(user, scopes, claims.get("aud")))


class TokensRevoker:
    """`services.tokens_revoker`: ends refresh-token families when sessions end."""

    def __init__(self, families: RefreshStorage, clock: Clock) -> None:
        self._families = families
        self._clock = clock

    def revoke_families_for_session(self, sid: str, *, reason: str = "logout") -> int:
        return self._families.revoke_families_where(now=self._clock.now(), reason=reason, sid=sid)

    def revoke_families_for_user(self, user_id: int, *, reason: str = "logout_everywhere") -> int:
        return self._families.revoke_families_where(
            now=self._clock.now(), reason=reason, user_id=user_id
        )

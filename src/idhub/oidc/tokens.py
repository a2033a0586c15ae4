"""The JWTs idhub signs: RFC 9068 access tokens, OpenID Connect ID tokens and back-channel
logout tokens, and the verification of access tokens (contract 3).

Access tokens carry a real `aud` (the resource system), so OA and reimbursement validate them
offline against the JWKS; `verify` additionally consults the revocation list and whether the
token's client is still registered and enabled, which is what userinfo and idhub's own APIs
use (introspection checks the same two on `verify_offline`), and `verify_without_waiting` is
the same check for the event loop (web/bearer.py): it answers only when no step can block.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from json.encoder import encode_basestring
from typing import Any, Protocol

from idhub.core.clients import Client
from idhub.core.clock import Clock
from idhub.oidc import jws
from idhub.oidc.jws import b64url
from idhub.oidc.keys import KeyStore

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105
LOGOUT_TOKEN_TYP = "logout+jwt"  # noqa: S105
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Tolerated clock difference between idhub replicas for `iat`/`nbf` checks (the default of
# `[tokens] clock_skew`).
LEEWAY = 10
# Signature-checked tokens remembered per process (cleared when full; ~1 KiB each).
VERIFIED_CACHE_SIZE = 10_000
# Pre-encoded constant parts of access tokens, one per (key, subject, audience, client):
# a few per client (cleared when full).
_PREFIX_CACHE_SIZE = 1_024


class InvalidToken(Exception):
    """The token is not a valid, current idhub access token; `reason` says why (for logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RevocationList(Protocol):
    def is_revoked(self, jti: str) -> bool: ...

    def is_revoked_without_waiting(self, jti: str) -> bool | None:
        """The list's answer if it can be had without blocking, else None."""
        ...


class ClientStanding(Protocol):
    """Whether a client is registered and enabled now (core/clients.py `ClientRegistry`)."""

    def enabled(self, client_id: str) -> bool: ...

    def enabled_if_fresh(self, client_id: str) -> bool | None:
        """`enabled` when memory holds the answer; None when it would read the database."""
        ...


def _client_of(claims: dict[str, Any]) -> str:
    return str(claims.get("client_id") or "")


def new_jti() -> str:
    """16 random bytes in unpadded base64url: what `secrets.token_urlsafe(16)` returns (the
    same source, `os.urandom`, and the same 22 characters), through jws's `b64url`."""
    return b64url(os.urandom(16))


def half_hash(value: str, alg: str) -> str:
    """`at_hash` / `c_hash`: the left half of the hash that matches the signing algorithm."""
    digest = (hashlib.sha512 if alg == "EdDSA" else hashlib.sha256)(value.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])


class AccessTokens:
    def __init__(
        self,
        keys: KeyStore,
        revocations: RevocationList,
        *,
        issuer: str,
        clock: Clock,
        ttl: int,
        leeway: float = LEEWAY,
        verified_limit: int = VERIFIED_CACHE_SIZE,
        clients: ClientStanding | None = None,
    ) -> None:
        self._keys = keys
        # Whether a token's client is still registered and enabled (None: not checked, for
        # a resource server's offline view). A token outlives its client's disabling or
        # removal until `exp`; the online checks refuse it from that moment.
        self._clients = clients
        self._revocations = revocations
        self.issuer = issuer
        self._clock = clock
        self.ttl = ttl
        # A token another replica signed with its clock ahead of ours by up to this is still
        # valid here; `exp` is not stretched (that would lengthen every token's life).
        self.leeway = leeway
        # Claims of signature-checked tokens by the SHA-256 of the token: the one cache of
        # verified tokens in a process (the event loop's check reads it too), holding no token.
        self._verified: dict[bytes, dict[str, Any]] = {}
        self._verified_limit = verified_limit
        self._prefixes: dict[tuple[str, str, str, str, str], tuple[str, bytes]] = {}

    def issue(
        self,
        client: Client,
        *,
        sub: str,
        audience: str,
        scopes: Iterable[str],
        extra: dict[str, Any] | None = None,
        ttl: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Signs an access token with the client's access-token algorithm; returns it and its
        claims (for the audit record and the token response)."""
        now = int(self._clock.now())
        exp = now + (ttl or self.ttl)
        jti = new_jti()
        scope = " ".join(scopes)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience,
            "client_id": client.client_id,
            "iat": now,
            "exp": exp,
            "jti": jti,
            "scope": scope,
        }
        alg = client.access_token_alg
        kid, key = self._keys.signer(alg)
        plain = exp.__class__ is int and sub.__class__ is str and audience.__class__ is str
        if extra or not plain:
            if extra:
                claims.update(extra)
            header = {"typ": ACCESS_TOKEN_TYP, "alg": alg, "kid": kid}
            return jws.sign(header, claims, key), claims
        # The common token (client credentials): only iat, exp, jti and scope change from one
        # token to the next, so the header and the claims up to `iat` are encoded once
        # (`_prefix`), and the bytes are exactly those `jws.sign` makes of `claims` (tested).
        head, rest = self._prefix(alg, kid, sub, audience, client.client_id)
        tail = f'{now},"exp":{exp},"jti":"{jti}","scope":{encode_basestring(scope)}}}'
        signing_input = head + b64url(rest + tail.encode("utf-8"))
        return signing_input + "." + jws.signature(alg, key, signing_input.encode("ascii")), claims

    def _prefix(self, alg: str, kid: str, sub: str, aud: str, client_id: str) -> tuple[str, bytes]:
        """The header segment, the dot and the base64url of the claims' constant start (the
        JSON up to the `iat` value, cut at a multiple of 3 bytes, so its base64 needs no
        padding and the rest continues it), and the bytes left over after the cut."""
        key = (alg, kid, sub, aud, client_id)
        known = self._prefixes.get(key)
        if known is None:
            header = jws.header_segment({"typ": ACCESS_TOKEN_TYP, "alg": alg, "kid": kid})
            start = (
                f'{{"iss":{encode_basestring(self.issuer)},"sub":{encode_basestring(sub)},'
                f'"aud":{encode_basestring(aud)},"client_id":{encode_basestring(client_id)},'
                '"iat":'
            ).encode()
            cut = len(start) - len(start) % 3
            known = (f"{header}.{b64url(start[:cut])}", start[cut:])
            if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                self._prefixes.clear()
            self._prefixes[key] = known
        return known

    def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The claims of a valid, unexpired, unrevoked idhub access token (contract 3)."""
        claims = self.verify_offline(token, audience=audience)
        if self._revocations.is_revoked(str(claims["jti"])):
            raise InvalidToken("revoked")
        if self._clients is not None and not self._clients.enabled(_client_of(claims)):
            raise InvalidToken("client disabled or removed")
        return claims

    def verify_without_waiting(
        self, token: str, *, audience: str | None = None
    ) -> dict[str, Any] | None:
        """`verify` for the event loop: the claims, or None ("must wait": the caller runs
        `verify` in a worker thread) when a step could block - a token whose signature this
        process has not checked yet (a key may have to be read), a revocation list that cannot
        be read without waiting, or a client registry due for its version check. Raises
        `InvalidToken` as `verify` does: expiry, audience, revocation and the client's
        standing are checked on every use, only the signature is remembered."""
        claims = self._verified.get(_cache_key(token))
        if claims is None:
            return None
        claims = self._current(claims, audience)
        revoked = self._revocations.is_revoked_without_waiting(str(claims["jti"]))
        if revoked is None:
            return None
        if revoked:
            raise InvalidToken("revoked")
        if self._clients is not None:
            enabled = self._clients.enabled_if_fresh(_client_of(claims))
            if enabled is None:
                return None
            if not enabled:
                raise InvalidToken("client disabled or removed")
        return claims

    def remembered_client(self, token: str) -> str | None:
        """The `client_id` of a token whose signature this process has checked, else None."""
        claims = self._verified.get(_cache_key(token))
        return None if claims is None else _client_of(claims)

    def client_enabled(self, claims: dict[str, Any]) -> bool:
        """Whether the client of verified `claims` is still registered and enabled (for a
        check built on `verify_offline`, such as introspection)."""
        return self._clients is None or self._clients.enabled(_client_of(claims))

    def verify_offline(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Everything `verify` checks except the revocation list (what a resource server does)."""
        key = _cache_key(token)
        claims = self._verified.get(key)
        if claims is None:
            claims = self._check_signed(token)
            if len(self._verified) >= self._verified_limit:
                self._verified.clear()  # strangers' tokens must not grow memory without bound
            self._verified[key] = claims
        return self._current(claims, audience)

    def _current(self, claims: dict[str, Any], audience: str | None) -> dict[str, Any]:
        """A copy of signature-checked claims if they are valid now and for `audience`."""
        now = self._clock.now()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
            raise InvalidToken("expired")
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > now + self.leeway:
            raise InvalidToken("issued in the future")
        if audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if audience not in audiences:
                raise InvalidToken("wrong audience")
        return dict(claims)

    def _check_signed(self, token: str) -> dict[str, Any]:
        """Claims of a token whose form, signature and issuer are right (time not checked).

        Results are remembered per process: the same token is typically presented many times
        (introspection, API calls) and its signature cannot change; time, audience and
        revocation are still checked on every use.
        """
        try:
            header, claims, signing_input, signature = jws.parse(token)
        except jws.MalformedJWS as exc:
            raise InvalidToken(f"malformed: {exc}") from None
        typ = str(header.get("typ", "")).lower()
        if typ not in (ACCESS_TOKEN_TYP, "application/" + ACCESS_TOKEN_TYP):
            raise InvalidToken("not an access token (typ)")
        kid = header.get("kid")
        found = self._keys.verification_key(kid) if isinstance(kid, str) else None
        if found is None:
            raise InvalidToken("unknown signing key")
        alg, public_key = found
        if header.get("alg") != alg:
            raise InvalidToken("algorithm does not match the key")
        if not jws.check_signature(alg, public_key, signing_input, signature):
            raise InvalidToken("bad signature")
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("sub"), str):
            raise InvalidToken("missing jti or sub")
        return claims


def _cache_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class IdTokens:
    def __init__(self, keys: KeyStore, *, issuer: str, clock: Clock, ttl: int) -> None:
        self._keys = keys
        self.issuer = issuer
        self._clock = clock
        self.ttl = ttl

    def sign_id_token(
        self,
        client: Client,
        *,
        claims: dict[str, Any],
        nonce: str | None = None,
        auth_time: float | None = None,
        acr: str | None = None,
        amr: list[str] | None = None,
        sid: str | None = None,
        access_token: str | None = None,
    ) -> str:
        alg = client.id_token_alg
        now = int(self._clock.now())
        body: dict[str, Any] = {
            **claims,
            "iss": self.issuer,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.ttl,
        }
        if nonce:
            body["nonce"] = nonce
        if auth_time is not None:
            body["auth_time"] = int(auth_time)
        if acr:
            body["acr"] = acr
        if amr:
            body["amr"] = list(amr)
        if sid:
            body["sid"] = sid
        if access_token:
            body["at_hash"] = half_hash(access_token, alg)
        kid, key = self._keys.signer(alg)
        return jws.sign({"typ": "JWT", "alg": alg, "kid": kid}, body, key)

    def sign_logout_token(self, client: Client, *, sub: str, sid: str | None) -> str:
        """An OpenID Connect Back-Channel Logout 1.0 logout token (never carries a nonce)."""
        alg = client.id_token_alg
        now = int(self._clock.now())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + 120,
            "jti": new_jti(),
            "sub": sub,
            "events": {BACKCHANNEL_EVENT: {}},
        }
        if sid:
            body["sid"] = sid
        kid, key = self._keys.signer(alg)
        return jws.sign({"typ": LOGOUT_TOKEN_TYP, "alg": alg, "kid": kid}, body, key)

    def decode_id_token_hint(self, token: str) -> dict[str, Any] | None:
        """The claims of an ID token idhub signed (signature and issuer checked, expiry NOT:
        RP-initiated logout accepts an expired `id_token_hint`). None when not ours."""
        try:
            header, claims, signing_input, signature = jws.parse(token)
        except jws.MalformedJWS:
            return None
        kid = header.get("kid")
        found = self._keys.verification_key(kid) if isinstance(kid, str) else None
        if found is None or header.get("alg") != found[0]:
            return None
        if not jws.check_signature(found[0], found[1], signing_input, signature):
            return None
        if (
            claims.get("iss") != self.issuer
            or str(header.get("typ", "JWT")).lower() == ACCESS_TOKEN_TYP
        ):
            return None
        return claims

"""Offline validation of idhub access tokens (RFC 9068 JWTs) by a resource system.

A system checks, without calling idhub: the signature against idhub's JWKS with an algorithm
from its allow-list that the key is for, `typ: at+jwt`, `iss`, that its own name is in `aud`,
`exp`/`nbf`/`iat` with leeway, and that `sub`, `client_id` and `jti` are present. Tokens
already validated are remembered until they expire (a bounded cache), because the same token
arrives on every request of a page. Revocation before expiry needs introspection: pass an
`Introspection` and every use is also asked of idhub.

Each failure raises its own subclass of `InvalidToken` (`idhub.sdk.errors`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx

from idhub.sdk.errors import (
    Expired,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    VerifierUnavailable,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from idhub.sdk.introspection import Introspection
from idhub.sdk.jwks import JwksCache
from idhub.sdk.jws import check_algorithm, parse, remember_header

__all__ = ["DEFAULT_ALGORITHMS", "InvalidToken", "TokenValidator", "check_claims", "verify_signed"]

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
DEFAULT_ALGORITHMS = ("ES256", "EdDSA", "RS256")
ACCESS_TOKEN_CLAIMS = ("iss", "aud", "exp", "iat", "sub", "client_id", "jti")


def discover(issuer: str, http: httpx.Client) -> dict[str, Any]:
    """Fetches the issuer's discovery document and checks it names the same issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = http.get(url)
        response.raise_for_status()
        document: Any = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise VerifierUnavailable(f"cannot read {url}: {exc}") from exc
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        found = document.get("issuer") if isinstance(document, dict) else None
        raise WrongIssuer(f"discovery at {url} names issuer {found!r}, not {issuer!r}")
    return document


class TokenValidator:
    def __init__(
        self,
        issuer: str,
        *,
        audience: str,
        jwks_uri: str | None = None,
        http: httpx.Client | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: int = 30,
        cache_size: int = 10_000,
        jwks_min_refresh: float = 1.0,
        introspection: Introspection | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._http = http or httpx.Client(timeout=5.0)
        self._jwks = JwksCache(
            jwks_uri or issuer.rstrip("/") + "/jwks", http=self._http, min_refresh=jwks_min_refresh
        )
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._introspection = introspection
        self._clock = clock
        # token -> (claims, time after which it is no longer served): insertion order, so
        # the oldest entry goes first when full. Reads take no lock (one dict lookup).
        self._cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_discovery(
        cls,
        issuer: str,
        *,
        audience: str,
        http: httpx.Client | None = None,
        introspect_as: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> TokenValidator:
        """A validator configured from the issuer's discovery document. `introspect_as`
        (client id, secret) also asks idhub about every use (instant revocation)."""
        client = http or httpx.Client(timeout=5.0)
        document = discover(issuer, client)
        if introspect_as is not None:
            endpoint = document.get("introspection_endpoint")
            if not isinstance(endpoint, str):
                raise VerifierUnavailable(f"{issuer} publishes no introspection endpoint")
            kwargs["introspection"] = Introspection(
                endpoint, client_id=introspect_as[0], client_secret=introspect_as[1], http=client
            )
        return cls(issuer, audience=audience, jwks_uri=document["jwks_uri"], http=client, **kwargs)

    def validate(self, token: str) -> dict[str, Any]:
        """The token's claims (a fresh dict each call), or a subclass of `InvalidToken`."""
        try:
            hit = self._cache.get(token)
        except TypeError:  # not even hashable, let alone a token
            raise MalformedToken("not a compact JWS") from None
        if hit is not None and hit[1] > self._clock():
            if self._introspection is not None:
                self._introspection.require_active(token, hit[0])
            return hit[0].copy()
        return self._validate(token)

    def cached(self, token: str) -> dict[str, Any] | None:
        """The claims of a token validated before and not expired, when answering needs no
        call to idhub (no introspection); None otherwise. Never raises."""
        if self._introspection is not None or not isinstance(token, str):
            return None
        hit = self._cache.get(token)
        if hit is not None and hit[1] > self._clock():
            return hit[0].copy()
        return None

    def _validate(self, token: str) -> dict[str, Any]:
        now = self._clock()
        claims = verify_signed(
            token, self._jwks, types=ACCESS_TOKEN_TYPES, algorithms=self._algorithms,
            what="an access token",
        )  # fmt: skip
        check_claims(
            claims,
            issuer=self.issuer,
            audience=self.audience,
            now=now,
            leeway=self._leeway,
            required=ACCESS_TOKEN_CLAIMS,
        )
        for name in ("sub", "client_id", "jti"):
            if not isinstance(claims[name], str):
                raise MissingClaim(f"{name} is not a string")
        if self._introspection is not None:
            self._introspection.require_active(token, claims)
        with self._lock:
            cache = self._cache
            cache[token] = (claims, claims["exp"] + self._leeway)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return claims.copy()


def verify_signed(
    token: str,
    jwks: JwksCache,
    *,
    types: Collection[str],
    algorithms: Collection[str],
    what: str,
) -> dict[str, Any]:
    """The claims of a compact JWS whose `typ` is one of `types` and whose signature verifies
    with an allowed algorithm against the issuer's key it names. Claims are not checked."""
    parsed = parse(token)
    # Explicit typing keeps one kind of idhub token from being replayed as another.
    if str(parsed.header.get("typ", "")).lower() not in types:
        raise WrongTokenType(f"not {what} (typ is not {min(types, key=len)})")
    key = jwks.key(parsed.kid)
    alg = check_algorithm(parsed, key, algorithms)
    key.verify(alg, parsed.signing_input, parsed.signature)
    remember_header(parsed)
    return parsed.claims()


_NUMBERS = (int, float)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # A bool is not a time, and neither is an overflowed 1e999 (JSON has no NaN).
    if type(value) not in _NUMBERS or value in _INFINITE:
        raise MissingClaim(f"{name} is not a number")
    return value  # type: ignore[no-any-return]


_INFINITE = (float("inf"), float("-inf"))


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    leeway: int,
    required: Collection[str],
) -> None:
    """Raises the `InvalidToken` subclass for the first claim that is missing or wrong."""
    for name in required:
        if name not in claims:
            missing = [name for name in required if name not in claims]
            raise MissingClaim(f"missing claims: {', '.join(missing)}")
    if claims.get("iss") != issuer:
        raise WrongIssuer(f"issued by {claims.get('iss')!r}, not {issuer!r}")
    aud = claims.get("aud")
    if aud != audience and not (type(aud) is list and audience in aud):
        raise WrongAudience(f"meant for {aud!r}, not {audience!r}")
    exp = _number(claims, "exp")
    if exp is not None and exp + leeway <= now:
        raise Expired("expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf - leeway > now:
        raise NotYetValid("not valid yet (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and iat - leeway > now:
        raise NotYetValid("issued in the future (iat)")

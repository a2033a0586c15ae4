"""Offline validation of idhub access tokens (RFC 9068 JWTs) by a resource system.

A system checks, without calling idhub: the signature against idhub's JWKS, `typ: at+jwt`,
`iss`, that its own name is in `aud`, and the time claims. Tokens already validated are
remembered until they expire, because the same token arrives on every request of a page.
Revocation before expiry needs introspection; keep access tokens short instead.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning

from idhub.sdk.jwks import JwksCache, JwksError

# idhub signs with `EdDSA` (Ed25519) for clients that ask for it; RFC 9864 names the fully
# specified `Ed25519` instead, and joserfc warns on the older name. The key type is pinned by
# the JWKS (OKP / Ed25519), so the polymorphism RFC 9864 worries about does not arise here.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
DEFAULT_ALGORITHMS = ("ES256", "EdDSA", "RS256")


class InvalidToken(Exception):
    """The token must not be trusted; `str()` says why, for logs (never echo it to users)."""


def discover(issuer: str, http: httpx.Client) -> dict[str, Any]:
    """Fetches the issuer's discovery document and checks it names the same issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = http.get(url)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    if document.get("issuer") != issuer:
        raise InvalidToken(f"discovery at {url} names issuer {document.get('issuer')!r}")
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._http = http or httpx.Client(timeout=5.0)
        self._jwks = JwksCache(
            jwks_uri or issuer.rstrip("/") + "/jwks", http=self._http, min_refresh=jwks_min_refresh
        )
        self._algorithms = list(algorithms)
        self._leeway = leeway
        self._clock = clock
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_discovery(
        cls, issuer: str, *, audience: str, http: httpx.Client | None = None, **kwargs: Any
    ) -> TokenValidator:
        client = http or httpx.Client(timeout=5.0)
        document = discover(issuer, client)
        return cls(issuer, audience=audience, jwks_uri=document["jwks_uri"], http=client, **kwargs)

    def validate(self, token: str) -> dict[str, Any]:
        """The token's claims, or `InvalidToken`."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None:
                if cached["exp"] + self._leeway > now:
                    self._cache.move_to_end(token)
                    return dict(cached)
                del self._cache[token]
        claims = self._validate(token, now)
        with self._lock:
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return dict(claims)

    def _validate(self, token: str, now: float) -> dict[str, Any]:
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
            required=("iss", "aud", "exp", "iat", "sub", "client_id", "jti"),
        )
        return claims


def verify_signed(
    token: str,
    jwks: JwksCache,
    *,
    types: Collection[str],
    algorithms: Collection[str],
    what: str,
) -> dict[str, Any]:
    """The claims of a compact JWS whose `typ` is one of `types` and whose signature verifies
    against the issuer's keys; `InvalidToken` otherwise. Claims are not checked here."""
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidToken("not a compact JWS") from exc
    # Explicit typing keeps one kind of idhub token from being replayed as another.
    if str(header.get("typ", "")).lower() not in types:
        raise InvalidToken(f"not {what} (typ is not {next(iter(types))})")
    try:
        keys = jwks.keys_for(header.get("kid"))
        return dict(jwt.decode(token, keys, algorithms=list(algorithms)).claims)
    except JwksError as exc:
        raise InvalidToken(str(exc)) from exc
    except (JoseError, ValueError) as exc:
        raise InvalidToken(f"signature or format rejected: {exc}") from exc


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    leeway: int,
    required: Collection[str],
) -> None:
    missing = [name for name in required if name not in claims]
    if missing:
        raise InvalidToken(f"missing claims: {', '.join(missing)}")
    if claims["iss"] != issuer:
        raise InvalidToken(f"issued by {claims['iss']!r}, not {issuer!r}")
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if audience not in audiences:
        raise InvalidToken(f"meant for {audiences}, not {audience!r}")
    if "exp" in claims and not isinstance(claims["exp"], (int, float)):
        raise InvalidToken("exp is not a number")
    if "exp" in claims and claims["exp"] + leeway <= now:
        raise InvalidToken("expired")
    if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] - leeway > now:
        raise InvalidToken("not valid yet")
    if isinstance(claims.get("iat"), (int, float)) and claims["iat"] - leeway > now:
        raise InvalidToken("issued in the future")

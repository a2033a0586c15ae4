"""An upstream provider's ID token, checked as OpenID Connect Core 3.1.3.7 says: signature
against the provider's published keys (fetched again once when a token names a key id not in
them: the provider rotated), issuer, audience and `azp`, expiry and issue time with the
configured clock skew, the sign-in's `nonce`, and the algorithm from an allow-list that never
holds "none". Every refusal is `UpstreamFailed` with a code; the token itself is never put in
a message."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from idhub.core.clock import Clock
from idhub.core.upstream import UpstreamFailed

# An ID token is a few hundred bytes; a megabyte "token" is an attack on the parser.
MAX_TOKEN = 16_384
_MAX_SUB = 255


class ProviderKeys:
    """The provider's JWKS, fetched when first needed and again when a token names a key id it
    does not hold. Unknown key ids fetch again at most once per `refetch_after` seconds, so a
    stream of forged tokens cannot turn idhub into a load generator against the provider."""

    def __init__(
        self, fetch: Callable[[], Mapping[str, Any]], clock: Clock, *, refetch_after: float = 30.0
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refetch_after = refetch_after
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._refetched_at: float | None = None

    def for_kid(self, kid: str | None) -> KeySet:
        if self._keys is None:
            self._load()
        if kid is not None and kid not in self._kids and self._may_refetch():
            self._refetched_at = self._clock.now()
            self._load()
        assert self._keys is not None
        return self._keys

    def _may_refetch(self) -> bool:
        last = self._refetched_at
        return last is None or self._clock.now() - last >= self._refetch_after

    def _load(self) -> None:
        document = self._fetch()
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise UpstreamFailed(
                f"the provider's JWKS could not be read as keys ({type(exc).__name__})",
                code="jwks_invalid",
            ) from None
        self._keys = keys
        self._kids = frozenset(str(k.kid) for k in keys.keys if k.kid is not None)


def validate_id_token(
    token: str,
    *,
    keys: ProviderKeys,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: Collection[str],
    now: float,
    skew: float,
) -> dict[str, Any]:
    """The ID token's claims, or UpstreamFailed saying what is wrong with it."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise UpstreamFailed("the provider sent no usable ID token", code="id_token_missing")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise UpstreamFailed(
            "the provider's ID token is not a signed JWT", code="id_token_invalid"
        ) from None
    alg = header.get("alg")
    if alg not in algorithms:
        raise UpstreamFailed(
            f"the provider's ID token is signed with {alg!r}, which is not allowed here "
            f"(allowed: {', '.join(algorithms)}; never 'none')",
            code="id_token_alg",
        )
    kid = header.get("kid")
    try:
        decoded = jwt.decode(
            token, keys.for_kid(kid if isinstance(kid, str) else None), algorithms=list(algorithms)
        )
    except InvalidKeyIdError:
        raise UpstreamFailed(
            f"the provider's ID token names key {kid!r}, which its JWKS does not hold",
            code="id_token_key_unknown",
        ) from None
    except BadSignatureError:
        raise UpstreamFailed(
            "the provider's ID token signature does not verify", code="id_token_signature"
        ) from None
    except JoseError as exc:
        raise UpstreamFailed(
            f"the provider's ID token could not be verified ({exc.error})", code="id_token_invalid"
        ) from None
    claims = dict(decoded.claims)
    check_claims(claims, issuer=issuer, client_id=client_id, nonce=nonce, now=now, skew=skew)
    return claims


def check_claims(
    claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str, now: float, skew: float
) -> None:
    """OIDC Core 3.1.3.7 steps 2-4, 9-11 on a verified token's claims."""
    if claims.get("iss") != issuer:
        raise UpstreamFailed(
            f"the ID token was issued by {claims.get('iss')!r}, not by {issuer!r}",
            code="id_token_issuer",
        )
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise UpstreamFailed(
            f"the ID token is not meant for this client (aud {aud!r}, expected {client_id!r})",
            code="id_token_audience",
        )
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise UpstreamFailed(
            f"the ID token has several audiences and its azp is {azp!r}, not {client_id!r}",
            code="id_token_audience",
        )
    exp, iat = _time(claims.get("exp")), _time(claims.get("iat"))
    if exp is None or iat is None:
        raise UpstreamFailed("the ID token has no valid exp and iat", code="id_token_invalid")
    if now > exp + skew:
        raise UpstreamFailed(
            f"the ID token expired {int(now - exp)} s ago", code="id_token_expired"
        )
    if iat > now + skew:
        raise UpstreamFailed(
            f"the ID token claims to be issued {int(iat - now)} s in the future (clocks apart?)",
            code="id_token_not_yet_valid",
        )
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise UpstreamFailed(
            "the ID token's nonce is not this sign-in's (a replayed or mixed-up response)",
            code="id_token_nonce",
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > _MAX_SUB:
        raise UpstreamFailed("the ID token has no valid sub", code="id_token_invalid")


def _time(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None

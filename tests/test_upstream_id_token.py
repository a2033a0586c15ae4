"""The ID-token rules that a well-behaved upstream never exercises: several audiences and
`azp`, missing claims, ES256 only when allowed, and how often unknown key ids fetch the JWKS
again. Tokens are signed here with keys the checker is handed as the provider's JWKS (the
full flow against a real provider is tests/test_upstream_oidc.py)."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from idhub.adapters.upstream_id_token import ProviderKeys, validate_id_token
from idhub.core.clock import FrozenClock
from idhub.core.upstream import UpstreamFailed

ISSUER = "https://login.parent.example"
NOW = 1_800_000_000.0


class Jwks:
    """The provider's published keys, counting how often they are fetched."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.fetches = 0

    def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        return KeySet(self.keys).as_dict(private=False)


RSA = RSAKey.generate_key(2048, parameters={"kid": "r1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def sign(key: Any, alg: str = "RS256", **claims: Any) -> str:
    body = {
        "iss": ISSUER,
        "aud": "subsidiary",
        "sub": "up-1",
        "nonce": "n-1",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


def check(token: str, jwks: Jwks, clock: FrozenClock | None = None, **kw: Any) -> dict[str, Any]:
    keys = ProviderKeys(jwks, clock or FrozenClock(NOW))
    options: dict[str, Any] = {
        "keys": keys,
        "issuer": ISSUER,
        "client_id": "subsidiary",
        "nonce": "n-1",
        "algorithms": ("RS256",),
        "now": NOW,
        "skew": 60.0,
        **kw,
    }
    return validate_id_token(token, **options)


def code_of(token: str, jwks: Jwks, **kw: Any) -> str:
    with pytest.raises(UpstreamFailed) as failed:
        check(token, jwks, **kw)
    return failed.value.code


def test_several_audiences_need_azp_naming_this_client() -> None:
    jwks = Jwks(RSA)
    both = ["subsidiary", "another-app"]
    assert check(sign(RSA, aud=both, azp="subsidiary"), jwks)["sub"] == "up-1"
    assert code_of(sign(RSA, aud=both), jwks) == "id_token_audience"
    assert code_of(sign(RSA, aud=both, azp="another-app"), jwks) == "id_token_audience"
    assert code_of(sign(RSA, aud="subsidiary", azp="another-app"), jwks) == "id_token_audience"
    assert code_of(sign(RSA, aud=["another-app"]), jwks) == "id_token_audience"


def test_missing_claims_are_refused() -> None:
    jwks = Jwks(RSA)
    assert code_of(sign(RSA, nonce=None), jwks) == "id_token_nonce"
    assert code_of(sign(RSA, exp=None), jwks) == "id_token_invalid"
    assert code_of(sign(RSA, iat="yesterday"), jwks) == "id_token_invalid"
    assert code_of(sign(RSA, sub=""), jwks) == "id_token_invalid"
    assert code_of(sign(RSA, iss=None), jwks) == "id_token_issuer"
    # The issuer is compared exactly: a trailing slash is another issuer.
    assert code_of(sign(RSA, iss=ISSUER + "/"), jwks) == "id_token_issuer"


def test_es256_only_when_allowed() -> None:
    jwks = Jwks(RSA, EC)
    token = sign(EC, alg="ES256")
    assert code_of(token, jwks) == "id_token_alg"
    assert check(token, jwks, algorithms=("RS256", "ES256"))["sub"] == "up-1"


def test_unknown_key_ids_fetch_again_but_not_on_every_token() -> None:
    clock = FrozenClock(NOW)
    jwks = Jwks(RSA)
    keys = ProviderKeys(jwks, clock, refetch_after=30)
    options: dict[str, Any] = {
        "keys": keys,
        "issuer": ISSUER,
        "client_id": "subsidiary",
        "nonce": "n-1",
        "algorithms": ("RS256",),
        "now": NOW,
        "skew": 60.0,
    }
    validate_id_token(sign(RSA), **options)
    assert jwks.fetches == 1
    # The provider rotates: the new key id is fetched at once.
    rotated = RSAKey.generate_key(2048, parameters={"kid": "r2"})
    jwks.keys.append(rotated)
    validate_id_token(sign(rotated), **options)
    assert jwks.fetches == 2
    # A forged key id right after: no third fetch within refetch_after, and a clear refusal.
    stranger = RSAKey.generate_key(2048, parameters={"kid": "forged"})
    for _ in range(5):
        with pytest.raises(UpstreamFailed) as failed:
            validate_id_token(sign(stranger), **options)
        assert failed.value.code == "id_token_key_unknown"
    assert jwks.fetches == 2
    clock.advance(31)
    with pytest.raises(UpstreamFailed):
        validate_id_token(sign(stranger), **options)
    assert jwks.fetches == 3


def test_a_jwks_that_is_not_keys_is_refused() -> None:
    with pytest.raises(UpstreamFailed) as failed:
        check(sign(RSA), lambda: {"keys": [{"kty": "nonsense"}]})  # type: ignore[arg-type]
    assert failed.value.code == "jwks_invalid"

"""oidc/jws.py without a server: what it signs verifies with `cryptography` and joserfc, and
signing builds no signature-scheme objects per token (they were ~10 % of an ES256 one)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from idhub.oidc import jws

CLAIMS = {"iss": "https://idhub.example", "sub": "svc", "aud": "reimburse", "exp": 2_000_000_000}

KEYS: dict[str, Any] = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}
IMPORT = {"ES256": ECKey, "RS256": RSAKey}


@pytest.mark.parametrize("alg", jws.ALGORITHMS)
def test_what_idhub_signs_verifies_here_and_with_joserfc(alg: str) -> None:
    key = KEYS[alg]
    token = jws.sign({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, key)
    header, claims, signing_input, signature = jws.parse(token)
    assert header == {"typ": "at+jwt", "alg": alg, "kid": "k1"} and claims == CLAIMS
    assert jws.check_signature(alg, key.public_key(), signing_input, signature)
    assert not jws.check_signature(alg, key.public_key(), signing_input + b"x", signature)
    if alg != "EdDSA":  # joserfc refuses the deprecated name (RFC 9864) with a warning
        public = IMPORT[alg].import_key(key.public_key())
        assert jwt.decode(token, public, algorithms=[alg]).claims == CLAIMS


@pytest.mark.parametrize("alg", jws.ALGORITHMS)
def test_signing_and_checking_build_no_scheme_objects(
    alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def built(*_args: Any) -> None:
        raise AssertionError("a signature scheme object was built for one token")

    monkeypatch.setattr(ec, "ECDSA", built)
    monkeypatch.setattr(padding, "PKCS1v15", built)
    monkeypatch.setattr(jws.hashes, "SHA256", built)
    key = KEYS[alg]
    token = jws.sign({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, key)
    _, _, signing_input, signature = jws.parse(token)
    assert jws.check_signature(alg, key.public_key(), signing_input, signature)

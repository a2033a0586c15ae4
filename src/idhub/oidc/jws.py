"""Compact JWS signing and verification for the three algorithms idhub issues with.

A lean path straight onto `cryptography`: token issuance and verification are the hot paths of
the provider, and one place that fixes the header form keeps every token idhub signs alike.
Keys are managed as JWKs by joserfc (`oidc/keys.py`); this module only sees native keys.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

ALGORITHMS = ("RS256", "ES256", "EdDSA")
_MAX_TOKEN = 16_384


class MalformedJWS(ValueError):
    """The value is not a compact JWS idhub can read."""


# base64url without padding straight from `binascii` (what `base64.urlsafe_b64encode` does
# under two more Python calls): every token signed runs it twice, once for its payload and
# once for its signature.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedJWS("bad base64url") from exc


# One encoder for every token: `json.dumps` with options builds a new encoder on each call,
# which costs as much as encoding the claims themselves. The output is byte-for-byte the same.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: dict[str, Any]) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


# The encoded header of each (typ, alg, kid) idhub signs with: a handful per key rotation.
_HEADERS: dict[tuple[tuple[str, Any], ...], str] = {}


def header_segment(header: dict[str, Any]) -> str:
    """The first part of a compact JWS for `header` (remembered for all-string headers)."""
    if not all(isinstance(v, str) for v in header.values()):
        return b64url(_json(header))
    key = tuple(header.items())
    segment = _HEADERS.get(key)
    if segment is None:
        segment = b64url(_json(header))
        if len(_HEADERS) > 64:
            _HEADERS.clear()
        _HEADERS[key] = segment
    return segment


# The signature schemes, built once: they hold no state, and building them was ~10 % of an
# ES256 signature's CPU (the `ECDSA` and `SHA256` objects of every call).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    signing_input = f"{header_segment(header)}.{b64url(_json(claims))}"
    return signing_input + "." + signature(header["alg"], key, signing_input.encode("ascii"))


def signature(alg: str, key: Any, signing_input: bytes) -> str:
    """The third part of a compact JWS: `signing_input` signed with `key` under `alg`, in
    base64url. For callers that build the first two parts themselves (oidc/tokens.py's
    access tokens from pre-encoded constant parts); `sign` is the generic form."""
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, _ECDSA_SHA256))
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        raw = key.sign(signing_input, _PKCS1, _SHA256)
    elif alg == "EdDSA":
        raw = key.sign(signing_input)
    else:
        raise ValueError(f"idhub does not sign with {alg}")
    return b64url(raw)


def parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Splits a compact JWS into (header, claims, signing input, signature) without verifying."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 2:
        raise MalformedJWS("not a compact JWS")
    head, body, sig = token.split(".")
    try:
        header = json.loads(b64url_decode(head))
        claims = json.loads(b64url_decode(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedJWS("header or payload is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedJWS("header and payload must be JSON objects")
    return header, claims, f"{head}.{body}".encode("ascii"), b64url_decode(sig)


def check_signature(alg: str, public_key: Any, signing_input: bytes, signature: bytes) -> bool:
    """True when `signature` over `signing_input` verifies under `public_key` with `alg`.

    The caller has already matched `alg` to the key's registered algorithm, so an attacker
    cannot pick the algorithm (no `none`, no RSA/HMAC confusion).
    """
    try:
        if alg == "ES256":
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public_key.verify(der, signing_input, _ECDSA_SHA256)
        elif alg == "RS256":
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(signature, signing_input, _PKCS1, _SHA256)
        elif alg == "EdDSA":
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                return False
            public_key.verify(signature, signing_input)
        else:
            return False
    except InvalidSignature:
        return False
    return True

"""Compact JWS reading and signature checks straight on `cryptography`, for the algorithms
idhub signs with (RS256, ES256, EdDSA).

A generic JOSE library spends most of a validation on generality (registries, header
objects, claim registries); here a token is split, its header read, its signature checked
against the one key its `kid` names, and only then is its payload parsed. Nothing in the
header can choose the key material (`jwk`, `jku`, `x5u`, `x5c` are never followed) and a
header with `crit` is refused, because no extension is understood.
"""

from __future__ import annotations

import binascii
import json
import json.scanner
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from idhub.sdk.errors import AlgorithmNotAllowed, BadSignature, MalformedToken

# Larger values are refused before any work: idhub's tokens are well under 4 KiB.
MAX_TOKEN = 16_384
MIN_RSA_BITS = 2048
_B64 = bytes.maketrans(b"-_+/=", b"+/***")
_PAD = (b"", b"", b"==", b"=")
_a2b = binascii.a2b_base64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The decoder's C scanner without its wrapper: a JSON value from position 0 and where it ended.
# NaN and Infinity are Python's extensions, not JSON: an `exp` of NaN would never expire.
_decoder: Any = json.JSONDecoder(parse_constant=_refuse_constant)
_scan: Any = json.scanner.make_scanner(_decoder)


def json_object(text: str, what: str) -> dict[str, Any]:
    """`text` as one JSON object and nothing else; `MalformedToken` naming `what` otherwise."""
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        raise MalformedToken(f"the {what} is not JSON") from None
    if type(value) is not dict or end != len(text):
        raise MalformedToken(f"the {what} is not a JSON object")
    return value


# Headers of verified tokens, by their encoded form: idhub's differ only by key and type.
_HEADERS: dict[str, dict[str, Any]] = {}
_MAX_HEADERS = 64
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()
_ECDSA = ec.ECDSA(_SHA256)


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 2): any other character is an error."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken("not base64url") from None
    if len(data) % 4 == 1:
        raise MalformedToken("not base64url")
    try:
        # The standard alphabet's own `+`, `/` and padding become `*`, which the strict
        # decoder refuses like every other character outside the alphabet.
        return _a2b(data.translate(_B64) + _PAD[len(data) % 4], strict_mode=True)
    except binascii.Error as exc:
        raise MalformedToken("not base64url") from exc


@dataclass(frozen=True)
class PublicKey:
    """One verification key from the issuer's JWKS, with the algorithms it is for."""

    kid: str
    algorithms: frozenset[str]
    key: Any

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> None:
        """Returns if `signature` is valid; `BadSignature` otherwise."""
        key = self.key
        try:
            if alg == "ES256":
                # JWS carries R || S (RFC 7518 3.4); cryptography wants DER.
                if len(signature) != 64:
                    raise BadSignature("an ES256 signature is 64 bytes")
                der = encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                key.verify(der, signing_input, _ECDSA)
            elif alg == "RS256":
                key.verify(signature, signing_input, _PKCS1, _SHA256)
            else:  # EdDSA / Ed25519, the only others a key can be for
                key.verify(signature, signing_input)
        except InvalidSignature:
            raise BadSignature("signature does not verify") from None


def import_jwk(jwk: Mapping[str, Any]) -> PublicKey | None:
    """The signing key a JWK describes, or None for one idhub's tokens cannot be signed with
    (another key type or curve, `use: enc`, no `kid`); `ValueError` for a broken one."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or jwk.get("use", "sig") != "sig":
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    key: Any
    if kty == "RSA":
        n, e = _int(jwk, "n"), _int(jwk, "e")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"key {kid}: RSA keys shorter than {MIN_RSA_BITS} bits are refused")
        key, algorithms = rsa.RSAPublicNumbers(e, n).public_key(), {"RS256"}
    elif kty == "EC" and crv == "P-256":
        numbers = ec.EllipticCurvePublicNumbers(_int(jwk, "x"), _int(jwk, "y"), ec.SECP256R1())
        key, algorithms = numbers.public_key(), {"ES256"}
    elif kty == "OKP" and crv == "Ed25519":
        x = b64url_decode(_text(jwk, "x"))
        # "Ed25519" is RFC 9864's fully specified name for what idhub labels EdDSA.
        key, algorithms = ed25519.Ed25519PublicKey.from_public_bytes(x), {"EdDSA", "Ed25519"}
    else:
        return None
    declared = jwk.get("alg")
    if declared is not None:
        if declared not in algorithms:
            raise ValueError(f"key {kid}: alg {declared!r} does not fit a {kty} key")
        algorithms = {"EdDSA", "Ed25519"} if declared in ("EdDSA", "Ed25519") else {declared}
    return PublicKey(kid, frozenset(algorithms), key)


def _text(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"key {jwk.get('kid')}: member {name!r} is missing")
    return value


def _int(jwk: Mapping[str, Any], name: str) -> int:
    try:
        return int.from_bytes(b64url_decode(_text(jwk, name)), "big")
    except MalformedToken:
        raise ValueError(f"key {jwk.get('kid')}: member {name!r} is not base64url") from None


class Parsed:
    """A compact JWS split and its header read; the payload is still unparsed bytes."""

    __slots__ = ("head", "header", "payload", "signature", "signing_input")

    def __init__(
        self,
        head: str,
        header: dict[str, Any],
        signing_input: bytes,
        payload: bytes,
        signature: bytes,
    ) -> None:
        self.head = head
        self.header = header
        self.signing_input = signing_input
        self.payload = payload
        self.signature = signature

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    def claims(self) -> dict[str, Any]:
        """The payload as a JSON object (call only after the signature verified)."""
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedToken("the payload is not UTF-8") from None
        return json_object(text, "payload")


def parse(token: str) -> Parsed:
    """Splits a compact JWS and reads its header; `MalformedToken` for anything else."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise MalformedToken("not a compact JWS (or larger than 16 KiB)")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise MalformedToken("not a compact JWS")
    head, body, sig = parts
    header = _HEADERS.get(head)
    if header is None:
        header = _header(head)
    signing_input = f"{head}.{body}".encode("ascii")
    return Parsed(head, header, signing_input, b64url_decode(body), b64url_decode(sig))


def _header(head: str) -> dict[str, Any]:
    try:
        text = b64url_decode(head).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedToken("the header is not UTF-8") from None
    header = json_object(text, "header")
    if "crit" in header:
        raise MalformedToken("the header names critical extensions this validator lacks")
    return header


def remember_header(parsed: Parsed) -> None:
    """Keeps the parsed header of a token whose signature verified, so the next token with
    the same header skips its parsing. Only signed headers get in: junk cannot crowd out the
    few idhub uses. Headers are never modified once parsed."""
    if parsed.head not in _HEADERS and len(_HEADERS) < _MAX_HEADERS:
        _HEADERS[parsed.head] = parsed.header


def check_algorithm(parsed: Parsed, key: PublicKey, allowed: Collection[str]) -> str:
    """The header's `alg`, if the allow-list and the key both accept it."""
    alg = parsed.alg
    if alg not in allowed:
        raise AlgorithmNotAllowed(f"alg {alg!r} is not allowed here")
    if alg not in key.algorithms:
        raise AlgorithmNotAllowed(f"alg {alg!r} is not what key {key.kid} signs with")
    return alg

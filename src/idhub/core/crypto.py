"""Keyed hashing and encryption at rest, all derived from the one server secret.

Client secrets and refresh tokens are long random values idhub generated, so a fast keyed
hash (HMAC-SHA-256) is the right store: a password KDF would cap the token endpoint at a
handful of requests per second and buy nothing against 256-bit random inputs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from idhub.core.secret import Secret
from idhub.errors import ConfigError

if TYPE_CHECKING:
    from _hashlib import HASH


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random value with `nbytes` of entropy."""
    return secrets.token_urlsafe(nbytes)


def new_secret_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def derive_key(master: Secret, label: str, length: int = 32) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"idhub:{label}".encode())
    return hkdf.derive(master.reveal().encode("utf-8"))


# SHA-256's block size in bytes: HMAC pads (or first hashes) its key to it.
_BLOCK = 64


def hmac_sha256_starts(key: bytes) -> tuple[HASH, HASH]:
    """The inner and outer SHA-256 of HMAC-SHA-256 under `key` (RFC 2104), each fed its
    padded key block: a value's HMAC is the outer's copy fed the digest of the inner's copy
    fed the value. A key longer than a block is hashed first, as HMAC does."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return (
        hashlib.sha256(padded.translate(hmac.trans_36)),
        hashlib.sha256(padded.translate(hmac.trans_5C)),
    )


class KeyedHasher:
    """HMAC-SHA-256 under a purpose-specific key; `check` compares in constant time."""

    def __init__(self, master: Secret, purpose: str) -> None:
        self._key = derive_key(master, f"hmac:{purpose}")
        # HMAC (RFC 2104) is SHA-256(K ^ opad || SHA-256(K ^ ipad || value)): the two hashes
        # are started once on the padded key, as `hmac` itself builds them without OpenSSL's
        # HMAC, and copied per value. Every client authentication hashes the presented
        # secret; copying OpenSSL's keyed HMAC context (`hmac.new(...).copy()`) took ~17,500
        # instructions per hash, two plain SHA-256 copies ~12,000. Never updated themselves,
        # so threads may copy them at once; the digests are those of
        # `hmac.new(key, value, sha256)` (tested).
        self._inner, self._outer = hmac_sha256_starts(self._key)

    def hash(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def check(self, value: str, stored: str | None) -> bool:
        if not stored:
            # Still spend the same work so a missing secret is not faster to detect.
            hmac.compare_digest(self.hash(value), "0" * 64)
            return False
        return hmac.compare_digest(self.hash(value), stored)


class Sealer:
    """AES-256-GCM for data at rest (private signing keys). `aad` binds a blob to its row."""

    def __init__(self, master: Secret, purpose: str = "keys-at-rest") -> None:
        self._aead = AESGCM(derive_key(master, f"aead:{purpose}"))

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise ConfigError(
                "stored private keys cannot be decrypted with this secret key",
                hint="IDHUB_SECRET_KEY differs from the one used at `idhub init`",
            ) from None

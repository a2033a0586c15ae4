"""core/crypto.py `hmac_sha256_starts`: HMAC-SHA-256 from two SHA-256 states started on the
padded key equals `hmac.new` for every key length (short, a block, longer: hashed first) and
value, and `KeyedHasher` hashes with them."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pytest

from idhub.core.crypto import KeyedHasher, hmac_sha256_starts
from idhub.core.secret import Secret

if TYPE_CHECKING:
    from _hashlib import HASH


def _mac(starts: tuple[HASH, HASH], value: bytes) -> str:
    inner, outer = (s.copy() for s in starts)
    inner.update(value)
    outer.update(inner.digest())
    return outer.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 63, 64, 65, 128, 200])
def test_the_starts_give_the_hmac_for_every_key_length(size: int) -> None:
    key = bytes((i * 37 + size) % 256 for i in range(size))
    starts = hmac_sha256_starts(key)
    for value in [b"", b"s", b"x" * 55, b"x" * 56, b"x" * 64, b"y" * 300, "密码".encode()]:
        assert _mac(starts, value) == hmac.new(key, value, hashlib.sha256).hexdigest()


def test_the_hasher_uses_the_starts_not_a_keyed_hmac() -> None:
    hasher = KeyedHasher(Secret("k" * 43), "client-secret")
    assert not any(isinstance(v, hmac.HMAC) for v in vars(hasher).values())
    inner, outer = hmac_sha256_starts(hasher._key)
    assert hasher._inner.digest() == inner.digest()
    assert hasher._outer.digest() == outer.digest()
    value = "a-client-secret"
    expected = hmac.new(hasher._key, value.encode(), hashlib.sha256).hexdigest()
    assert hasher.hash(value) == expected
    # The starts are copied, never fed: the next value's digest is not changed by this one.
    assert hasher.hash(value) == expected
    assert hasher.check(value, expected) and not hasher.check(value, "0" * 64)

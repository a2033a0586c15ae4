"""Human passwords: argon2id, by default with the OWASP Password Storage Cheat Sheet parameters.

OWASP's first recommended argon2id setting is m=19 MiB, t=2, p=1; measured here it costs about
21 ms a hash, which a person signing in never notices and which still makes offline guessing
expensive. The parameters are settings (`[passwords]`); a stored hash made with other
parameters is rehashed with the configured ones at the user's next successful sign-in. What a
password must be is `core/password_policy.py`. These hashes are for passwords people choose,
never for client secrets (those are long random values kept as HMACs, see `core/crypto.py`).
"""

from __future__ import annotations

import unicodedata
from typing import Protocol

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idhub.core.identity import User
from idhub.errors import AuthenticationFailed

# OWASP Password Storage Cheat Sheet, argon2id option 1.
TIME_COST = 2
MEMORY_COST_KIB = 19 * 1024
PARALLELISM = 1
HASH_LEN = 32
SALT_LEN = 16

MIN_LENGTH = 8
MAX_LENGTH = 1024


def normalise(password: str) -> str:
    """NFKC so that the same password typed on a Chinese IME (full-width characters) and on a
    Latin keyboard hashes the same way; NIST SP 800-63B recommends normalising."""
    return unicodedata.normalize("NFKC", password)


class PasswordHasher:
    """argon2id hashing and verification in PHC string form (`$argon2id$v=19$m=...`)."""

    def __init__(
        self,
        *,
        time_cost: int = TIME_COST,
        memory_cost: int = MEMORY_COST_KIB,
        parallelism: int = PARALLELISM,
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=HASH_LEN,
            salt_len=SALT_LEN,
            type=Type.ID,
        )
        # Verifying against this keeps an unknown username as slow as a wrong password.
        self._dummy = self._argon2.hash("idhub-timing-equaliser")

    def hash(self, password: str) -> str:
        return self._argon2.hash(normalise(password))

    def check(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; a missing or malformed hash is a mismatch."""
        if not stored:
            self.spend_equal_time(password)
            return False
        try:
            return bool(self._argon2.verify(stored, normalise(password)))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return bool(self._argon2.check_needs_rehash(stored))
        except InvalidHashError:
            return True

    def spend_equal_time(self, password: str) -> None:
        try:
            self._argon2.verify(self._dummy, normalise(password) + "\x00")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            pass


class PasswordStore(Protocol):
    """The part of the identity store the local verifier needs."""

    def password_hash(self, user_id: int) -> str | None: ...
    def set_password_hash(self, user_id: int, password_hash: str) -> None: ...


class LocalPasswordVerifier:
    """`PasswordVerifier` for users whose source is "local": argon2id hashes in the users table.

    A hash made with other parameters than the configured ones (older defaults, or settings
    changed since) is rehashed with the configured ones on the next successful sign-in.
    """

    def __init__(self, store: PasswordStore, hasher: PasswordHasher) -> None:
        self._store = store
        self._hasher = hasher

    def verify(self, user: User, password: str) -> None:
        stored = self._store.password_hash(user.id)
        if not stored:
            # A user without a local password (not set yet) cannot sign in; to the audit log
            # this is a wrong password, like any other guess.
            self._hasher.spend_equal_time(password)
            raise AuthenticationFailed("bad_password")
        if not self._hasher.check(stored, password):
            raise AuthenticationFailed("bad_password")
        if self._hasher.needs_rehash(stored):
            self._store.set_password_hash(user.id, self._hasher.hash(password))

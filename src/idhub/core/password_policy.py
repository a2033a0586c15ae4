"""What a local password must be, and the one way a local password is set.

NIST SP 800-63B, section 5.1.1.2: a minimum length, no composition rules, and a check against
passwords known to be common or breached. idhub also refuses the username and the user's last
`history` passwords, so a forced change cannot be undone by setting the old one again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from idhub.core.passwords import MAX_LENGTH, MIN_LENGTH, PasswordHasher, normalise
from idhub.errors import InvalidInput

# "Password2024!" is "password" to a guesser: common words with digits and symbols stuck on.
_DECORATION = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$")
_MIN_BASE = 4


def canonical(password: str) -> str:
    """The form the common-password list is compared in (NFKC, case-folded)."""
    return normalise(password).casefold()


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = MIN_LENGTH
    # How many of the user's most recent passwords (the current one included) may not be reused.
    history: int = 5
    common: Collection[str] = field(default_factory=frozenset)

    def check_common(self, password: str) -> bool:
        """True if the password, or its letters without the digits and symbols around them,
        is on the list of common passwords."""
        value = canonical(password)
        if value in self.common:
            return True
        found = _DECORATION.match(value)
        base = found.group(1) if found else value
        return len(base) >= _MIN_BASE and base in self.common

    def require_acceptable(self, password: str, *, username: str | None = None) -> None:
        """Raises `InvalidInput` with a sentence for the admin for a password not to be set."""
        value = normalise(password)
        if len(value) < self.min_length:
            raise InvalidInput(f"a password needs at least {self.min_length} characters")
        if len(value) > MAX_LENGTH:
            raise InvalidInput(f"a password may have at most {MAX_LENGTH} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise InvalidInput("a password must not contain control characters")
        if username and value.casefold() == username.casefold():
            raise InvalidInput("a password must not be the username")
        if len(set(value)) == 1:
            raise InvalidInput("a password must not be one character repeated")
        if self.check_common(value):
            raise InvalidInput(
                "this password is on the list of common or breached passwords; choose another"
            )


class PasswordHistoryStore(Protocol):
    def previous_password_hashes(self, user_id: int, *, limit: int) -> list[str]: ...
    def replace_password_hash(self, user_id: int, password_hash: str, *, keep: int) -> None: ...


class LocalPasswords:
    """Sets local passwords under the policy (CLI today, an account page later)."""

    def __init__(
        self, store: PasswordHistoryStore, hasher: PasswordHasher, policy: PasswordPolicy
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._policy = policy

    @property
    def policy(self) -> PasswordPolicy:
        return self._policy

    def require_acceptable(self, password: str, *, username: str | None = None) -> None:
        self._policy.require_acceptable(password, username=username)

    def hash_new(self, password: str, *, username: str) -> str:
        """The hash of a first password (a new user has no history)."""
        self._policy.require_acceptable(password, username=username)
        return self._hasher.hash(password)

    def apply_password(self, user_id: int, password: str, *, username: str) -> None:
        """Checks `password` against the policy and the user's recent passwords, then sets
        it, keeping the replaced hash in the history."""
        self._policy.require_acceptable(password, username=username)
        recent = self._store.previous_password_hashes(user_id, limit=self._policy.history)
        if any(self._hasher.check(stored, password) for stored in recent):
            raise InvalidInput(
                f"a password must differ from the last {self._policy.history} passwords"
            )
        self._store.replace_password_hash(
            user_id, self._hasher.hash(password), keep=max(self._policy.history - 1, 0)
        )

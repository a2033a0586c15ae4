"""What the token side keeps between requests, as records and the storage interfaces the
adapters implement: authorization codes, refresh-token families, revoked access-token ids, the
access-token ids each grant produced and used client-assertion ids.

Nothing in these records is a usable credential: codes are kept by SHA-256, refresh tokens by
keyed hash. Every "first use or replay" decision is the store's to make atomically, so two
replicas racing on one code or refresh token cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from idhub.core.identity import User

CodeStatus = Literal["ok", "unknown", "used", "expired"]
RefreshStatus = Literal["ok", "grace", "unknown", "reused", "revoked", "expired", "invalid_scope"]


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    user_id: int
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    resource: str | None
    sid: str | None
    auth_time: float
    acr: str | None
    amr: list[str]
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class RefreshFamily:
    """The refresh tokens descending from one grant; revoking it ends them all."""

    id: str
    client_id: str
    user_id: int
    sid: str | None
    scope: str
    audience: str | None
    auth_time: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class Rotation:
    """What presenting a refresh token did: `ok` (rotated), `grace` (a retry within the grace
    window: `successor` is the sealed token it was already exchanged for), or why not."""

    status: RefreshStatus
    family: RefreshFamily | None
    successor: bytes | None = None


class CodeStorage(Protocol):
    def save_code(self, record: CodeRecord) -> None: ...

    def find_code(self, code_hash: str, now: float) -> tuple[CodeStatus, CodeRecord | None]:
        """What `consume_code` would answer, without using the code up."""
        ...

    def find_code_and_user(
        self, code_hash: str, now: float
    ) -> tuple[CodeStatus, CodeRecord | None, User | None]:
        """`find_code` and the user the code is for (None when gone), read together: the
        code exchange needs both."""
        ...

    def consume_code(self, code_hash: str, now: float) -> CodeStatus:
        """Marks the code used (first use only) and says what happened; of two racing
        redemptions of one code exactly one gets "ok"."""
        ...


class RefreshStorage(Protocol):
    def start_family(
        self, family: RefreshFamily, *, token_hash: str, issued_at: float, expires_at: float
    ) -> None: ...

    def rotate(
        self,
        token_hash: str,
        *,
        new_hash: str,
        now: float,
        expires_at: float,
        client_id: str,
        scope: list[str] | None = None,
        sealed: bytes | None = None,
        grace: float = 0.0,
        family: RefreshFamily | None = None,
    ) -> Rotation:
        """Swaps a current refresh token for a new one in one transaction; a rotated token
        presented again revokes its family ("reused"), unless it comes back within `grace`
        seconds while its successor is unused ("grace": the sealed successor is returned).
        `family`: the live family `find_refresh_and_user` found the token in a moment ago;
        when the swap wins in it, the family is not read again."""
        ...

    def find_refresh(self, token_hash: str) -> tuple[RefreshFamily, float, float | None] | None:
        """(family, expires_at, rotated_at) of a refresh token."""
        ...

    def find_refresh_and_user(
        self, token_hash: str
    ) -> tuple[RefreshFamily, float, float | None, User | None] | None:
        """`find_refresh` and the family's user (None when gone), read together."""
        ...

    def revoke_family(self, family_id: str, now: float, reason: str) -> int: ...

    def revoke_families_where(
        self, *, now: float, reason: str, sid: str | None = None, user_id: int | None = None
    ) -> int: ...


class AccessTokenRevocations(Protocol):
    def revoke_jti(self, jti: str, *, expires_at: float, now: float) -> None:
        """Idempotent (RFC 7009): revoking twice is not an error."""
        ...

    def is_revoked(self, jti: str) -> bool: ...


class GrantAccessTokens(Protocol):
    """The access tokens a grant (an authorization code and the refresh family it started)
    produced, so that reusing the code can revoke them all (RFC 6749 4.1.2)."""

    def record_grant_token(self, grant_id: str, jti: str, *, expires_at: float) -> None: ...

    def revoke_grant_tokens(self, grant_id: str, *, now: float) -> int:
        """Puts every unexpired access token of the grant on the revocation list."""
        ...


class AssertionLedger(Protocol):
    def use_assertion(self, client_id: str, jti: str, *, expires_at: float) -> bool:
        """Records a client assertion id; False if it was seen before (a replay)."""
        ...


class TokenPurge(Protocol):
    def purge(self, now: float, *, grace: float = 86400.0) -> dict[str, int]:
        """Drops rows that can no longer matter; returns how many of each kind."""
        ...


class TokenStorage(
    CodeStorage,
    RefreshStorage,
    AccessTokenRevocations,
    GrantAccessTokens,
    AssertionLedger,
    TokenPurge,
    Protocol,
):
    """Everything above in one store (what the SQL adapter provides)."""

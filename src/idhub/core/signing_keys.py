"""Signing keys as stored: the record (private half already sealed) and the storage interface
the key adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_enc: bytes
    created_at: float
    activated_at: float | None
    retired_at: float | None
    expires_at: float | None


class SigningKeyStorage(Protocol):
    def all(self) -> list[SigningKeyRecord]:
        """Every key, oldest first."""
        ...

    def add_active(self, record: SigningKeyRecord, *, retire_until: float | None) -> list[str]:
        """Stores `record` as the active key for its algorithm and retires the previous active
        key(s) of that algorithm, atomically; returns the retired kids."""
        ...

    def version(self) -> int:
        """A counter that moves whenever the key set changes (other processes watch it)."""
        ...

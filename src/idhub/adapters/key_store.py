"""Signing keys in the `signing_keys` table (private halves arrive here already sealed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from idhub.adapters.client_store import bump_counter, read_counter
from idhub.adapters.db import signing_keys

COUNTER = "signing_keys"


@dataclass(frozen=True)
class KeyRow:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_enc: bytes
    created_at: float
    activated_at: float | None
    retired_at: float | None
    expires_at: float | None


class SqlKeyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def all(self) -> list[KeyRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(signing_keys).order_by(signing_keys.c.created_at))
            return [
                KeyRow(
                    kid=r.kid,
                    alg=r.alg,
                    public_jwk=dict(r.public_jwk),
                    private_enc=bytes(r.private_enc),
                    created_at=r.created_at,
                    activated_at=r.activated_at,
                    retired_at=r.retired_at,
                    expires_at=r.expires_at,
                )
                for r in rows
            ]

    def add_active(self, row: KeyRow, *, retire_until: float | None) -> list[str]:
        """Stores `row` as the active key for its algorithm and retires the previous active
        key(s) of that algorithm (kept for verification until `retire_until`), atomically.
        Returns the retired kids."""
        with self._engine.begin() as conn:
            retired = [
                str(kid)
                for kid in conn.execute(
                    select(signing_keys.c.kid).where(
                        signing_keys.c.alg == row.alg, signing_keys.c.retired_at.is_(None)
                    )
                ).scalars()
            ]
            if retired:
                conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.kid.in_(retired))
                    .values(retired_at=row.created_at, expires_at=retire_until)
                )
            conn.execute(
                insert(signing_keys).values(
                    kid=row.kid,
                    alg=row.alg,
                    public_jwk=row.public_jwk,
                    private_enc=row.private_enc,
                    created_at=row.created_at,
                    activated_at=row.activated_at,
                    retired_at=None,
                    expires_at=None,
                )
            )
            bump_counter(conn, COUNTER)
        return retired

    def version(self) -> int:
        with self._engine.connect() as conn:
            return read_counter(conn, COUNTER)

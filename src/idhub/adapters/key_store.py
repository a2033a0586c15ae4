"""`SigningKeyStorage` (core/signing_keys.py) in the `signing_keys` table (private halves
arrive here already sealed)."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from idhub.adapters._storage_errors import storage_boundary, translate_storage_errors
from idhub.adapters.client_store import bump_counter, read_counter
from idhub.adapters.db import signing_keys
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.signing_keys import SigningKeyRecord

COUNTER = "signing_keys"


@storage_boundary
class SqlKeyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @translate_storage_errors
    def all(self) -> list[SigningKeyRecord]:
        with connect(self._engine) as conn:
            rows = conn.execute(select(signing_keys).order_by(signing_keys.c.created_at))
            return [
                SigningKeyRecord(
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

    @translate_storage_errors
    def add_active(self, record: SigningKeyRecord, *, retire_until: float | None) -> list[str]:
        """Stores `record` as the active key for its algorithm and retires the previous active
        key(s) of that algorithm (kept for verification until `retire_until`), atomically.
        Returns the retired kids."""
        with begin(self._engine) as conn:
            retired = [
                str(kid)
                for kid in conn.execute(
                    select(signing_keys.c.kid).where(
                        signing_keys.c.alg == record.alg, signing_keys.c.retired_at.is_(None)
                    )
                ).scalars()
            ]
            if retired:
                conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.kid.in_(retired))
                    .values(retired_at=record.created_at, expires_at=retire_until)
                )
            conn.execute(
                insert(signing_keys).values(
                    kid=record.kid,
                    alg=record.alg,
                    public_jwk=record.public_jwk,
                    private_enc=record.private_enc,
                    created_at=record.created_at,
                    activated_at=record.activated_at,
                    retired_at=None,
                    expires_at=None,
                )
            )
            bump_counter(conn, COUNTER)
        return retired

    @translate_storage_errors
    def version(self) -> int:
        with connect(self._engine) as conn:
            return read_counter(conn, COUNTER)

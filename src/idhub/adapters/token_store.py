"""Authorization codes, refresh-token families, revoked access-token ids and used client
assertions.

Nothing here holds a usable credential: codes are stored by SHA-256, refresh tokens by keyed
hash; every state change that decides "first use or replay" is one conditional UPDATE or a
primary-key INSERT, so two replicas racing on the same code or refresh token cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters.db import (
    authorization_codes,
    refresh_families,
    refresh_tokens,
    revoked_tokens,
    used_assertions,
)


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
class Family:
    id: str
    client_id: str
    user_id: int
    sid: str | None
    scope: str
    audience: str | None
    auth_time: float | None
    revoked_at: float | None


CodeStatus = Literal["ok", "unknown", "used", "expired"]
RefreshStatus = Literal["ok", "unknown", "reused", "revoked", "expired"]


def _family(row: Any) -> Family:
    m = row._mapping
    return Family(
        id=m["id"],
        client_id=m["client_id"],
        user_id=m["user_id"],
        sid=m["sid"],
        scope=m["scope"],
        audience=m["audience"],
        auth_time=m["auth_time"],
        revoked_at=m["revoked_at"],
    )


class SqlTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ------------------------------------------------------------------ codes

    def save_code(self, record: CodeRecord) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(authorization_codes).values(
                    code_hash=record.code_hash,
                    client_id=record.client_id,
                    user_id=record.user_id,
                    redirect_uri=record.redirect_uri,
                    scope=record.scope,
                    nonce=record.nonce,
                    code_challenge=record.code_challenge,
                    code_challenge_method=record.code_challenge_method,
                    resource=record.resource,
                    sid=record.sid,
                    auth_time=record.auth_time,
                    acr=record.acr,
                    amr=list(record.amr),
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    used_at=None,
                )
            )

    def consume_code(self, code_hash: str, now: float) -> tuple[CodeStatus, CodeRecord | None]:
        """Marks the code used (first use only) and returns it with what happened."""
        with self._engine.begin() as conn:
            first = conn.execute(
                update(authorization_codes)
                .where(
                    authorization_codes.c.code_hash == code_hash,
                    authorization_codes.c.used_at.is_(None),
                )
                .values(used_at=now)
            ).rowcount
            row = conn.execute(
                select(authorization_codes).where(authorization_codes.c.code_hash == code_hash)
            ).first()
        if row is None:
            return "unknown", None
        m = row._mapping
        record = CodeRecord(
            **{k: m[k] for k in CodeRecord.__dataclass_fields__ if k != "amr"},
            amr=list(m["amr"] or []),
        )
        if not first:
            return "used", record
        if record.expires_at <= now:
            return "expired", record
        return "ok", record

    def purge_codes(self, before: float) -> int:
        with self._engine.begin() as conn:
            return int(
                conn.execute(
                    delete(authorization_codes).where(authorization_codes.c.expires_at < before)
                ).rowcount
            )

    # ------------------------------------------------------------------ refresh families

    def start_family(
        self, family: Family, *, token_hash: str, issued_at: float, expires_at: float
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(refresh_families).values(
                    id=family.id,
                    client_id=family.client_id,
                    user_id=family.user_id,
                    sid=family.sid,
                    scope=family.scope,
                    audience=family.audience,
                    auth_time=family.auth_time,
                    created_at=issued_at,
                    revoked_at=None,
                )
            )
            conn.execute(
                insert(refresh_tokens).values(
                    token_hash=token_hash,
                    family_id=family.id,
                    issued_at=issued_at,
                    expires_at=expires_at,
                    rotated_at=None,
                )
            )

    def rotate(
        self, token_hash: str, *, new_hash: str, now: float, expires_at: float
    ) -> tuple[RefreshStatus, Family | None]:
        """Swaps a current refresh token for a new one in its family.

        Presenting a token that was already rotated is reuse: the whole family is revoked
        in the same transaction (someone holds a copy they should not have).
        """
        with self._engine.begin() as conn:
            row = conn.execute(
                select(refresh_tokens, refresh_families)
                .join(refresh_families, refresh_families.c.id == refresh_tokens.c.family_id)
                .where(refresh_tokens.c.token_hash == token_hash)
            ).first()
            if row is None:
                return "unknown", None
            family = _family(row)
            if family.revoked_at is not None:
                return "revoked", family
            m = row._mapping
            if m["rotated_at"] is not None:
                self._revoke(conn, [family.id], now, "refresh_token_reuse")
                return "reused", family
            if m["expires_at"] <= now:
                return "expired", family
            won = conn.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.rotated_at.is_(None)
                )
                .values(rotated_at=now)
            ).rowcount
            if not won:
                # A concurrent request rotated it first: that is a replay as well.
                self._revoke(conn, [family.id], now, "refresh_token_reuse")
                return "reused", family
            conn.execute(
                insert(refresh_tokens).values(
                    token_hash=new_hash,
                    family_id=family.id,
                    issued_at=now,
                    expires_at=expires_at,
                    rotated_at=None,
                )
            )
        return "ok", family

    def find_refresh(self, token_hash: str) -> tuple[Family, float, float | None] | None:
        """(family, expires_at, rotated_at) of a refresh token, for introspection/revocation."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(refresh_tokens, refresh_families)
                .join(refresh_families, refresh_families.c.id == refresh_tokens.c.family_id)
                .where(refresh_tokens.c.token_hash == token_hash)
            ).first()
        if row is None:
            return None
        return _family(row), row._mapping["expires_at"], row._mapping["rotated_at"]

    def revoke_family(self, family_id: str, now: float, reason: str) -> int:
        with self._engine.begin() as conn:
            return self._revoke(conn, [family_id], now, reason)

    def revoke_families_where(
        self, *, now: float, reason: str, sid: str | None = None, user_id: int | None = None
    ) -> int:
        query = select(refresh_families.c.id).where(refresh_families.c.revoked_at.is_(None))
        if sid is not None:
            query = query.where(refresh_families.c.sid == sid)
        if user_id is not None:
            query = query.where(refresh_families.c.user_id == user_id)
        with self._engine.begin() as conn:
            ids = [str(i) for i in conn.execute(query).scalars()]
            return self._revoke(conn, ids, now, reason) if ids else 0

    @staticmethod
    def _revoke(conn: Any, ids: list[str], now: float, reason: str) -> int:
        return int(
            conn.execute(
                update(refresh_families)
                .where(refresh_families.c.id.in_(ids), refresh_families.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason[:100])
            ).rowcount
        )

    # ------------------------------------------------------------------ access tokens

    def revoke_jti(self, jti: str, *, expires_at: float, now: float) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(revoked_tokens).values(jti=jti, expires_at=expires_at, revoked_at=now)
                )
        except IntegrityError:
            pass  # already revoked: revocation is idempotent (RFC 7009)

    def is_revoked(self, jti: str) -> bool:
        with self._engine.connect() as conn:
            return (
                conn.execute(
                    select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti)
                ).first()
                is not None
            )

    # ------------------------------------------------------------------ client assertions

    def use_assertion(self, client_id: str, jti: str, *, expires_at: float) -> bool:
        """Records a private_key_jwt assertion id; False if it was seen before (a replay)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(used_assertions).values(
                        client_id=client_id, jti=jti[:200], expires_at=expires_at
                    )
                )
        except IntegrityError:
            return False
        return True

    def purge(self, now: float) -> None:
        """Drops rows that can no longer matter (expired codes, revocations, assertion ids)."""
        with self._engine.begin() as conn:
            conn.execute(
                delete(authorization_codes).where(authorization_codes.c.expires_at < now - 3600)
            )
            conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < now))
            conn.execute(delete(used_assertions).where(used_assertions.c.expires_at < now))

"""Second factors in the `mfa_*` tables: TOTP secrets (sealed), recovery-code hashes, passkeys,
WebAuthn challenges and remembered devices. Every single-use rule (a TOTP step, a recovery code,
a challenge) is one conditional UPDATE or DELETE, so two concurrent uses cannot both succeed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary, translate_storage_errors
from idhub.adapters.db import (
    mfa_accounts,
    mfa_challenges,
    mfa_devices,
    mfa_passkeys,
    mfa_recovery_codes,
)
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.mfa import MfaAccount, Passkey
from idhub.core.remembered_devices import RememberedDevice


def _passkey(row: Row[Any]) -> Passkey:
    m = row._mapping
    return Passkey(
        id=m["id"],
        user_id=m["user_id"],
        credential_id=m["credential_id"],
        public_key=bytes(m["public_key"]),
        sign_count=int(m["sign_count"]),
        name=m["name"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
    )


def _device(row: Row[Any]) -> RememberedDevice:
    m = row._mapping
    return RememberedDevice(
        id=m["id"],
        user_id=m["user_id"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
        user_agent=m["user_agent"],
        ip=m["ip"],
    )


@storage_boundary
class SqlMfaStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ------------------------------------------------------------------ accounts and TOTP

    @translate_storage_errors
    def account(self, user_id: int) -> MfaAccount | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(mfa_accounts).where(mfa_accounts.c.user_id == user_id)
            ).first()
        if row is None:
            return None
        m = row._mapping
        return MfaAccount(
            user_id=user_id,
            required=bool(m["required"]),
            totp_secret_enc=bytes(m["totp_secret_enc"]) if m["totp_secret_enc"] else None,
            totp_confirmed_at=m["totp_confirmed_at"],
            totp_last_step=m["totp_last_step"],
            failed_attempts=int(m["failed_attempts"] or 0),
            blocked_until=m["blocked_until"],
        )

    def _upsert(self, conn: Connection, user_id: int, now: float, **values: Any) -> None:
        changed = conn.execute(
            update(mfa_accounts)
            .where(mfa_accounts.c.user_id == user_id)
            .values(updated_at=now, **values)
        ).rowcount
        if changed:
            return
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(mfa_accounts).values(
                        **{
                            "user_id": user_id,
                            "required": False,
                            "failed_attempts": 0,
                            "updated_at": now,
                            **values,
                        }
                    )
                )
        except IntegrityError:
            conn.execute(
                update(mfa_accounts)
                .where(mfa_accounts.c.user_id == user_id)
                .values(updated_at=now, **values)
            )

    @translate_storage_errors
    def set_required(self, user_id: int, required: bool, now: float) -> None:
        with begin(self._engine) as conn:
            self._upsert(conn, user_id, now, required=required)

    @translate_storage_errors
    def save_totp(self, user_id: int, secret_enc: bytes, now: float) -> None:
        with begin(self._engine) as conn:
            self._upsert(
                conn,
                user_id,
                now,
                totp_secret_enc=secret_enc,
                totp_confirmed_at=None,
                totp_last_step=None,
            )

    @translate_storage_errors
    def confirm_totp(self, user_id: int, step: int, now: float) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(mfa_accounts)
                .where(
                    mfa_accounts.c.user_id == user_id,
                    mfa_accounts.c.totp_secret_enc.is_not(None),
                    mfa_accounts.c.totp_confirmed_at.is_(None),
                )
                .values(totp_confirmed_at=now, totp_last_step=step, updated_at=now)
            ).rowcount
        return bool(changed)

    @translate_storage_errors
    def claim_totp_step(self, user_id: int, step: int) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(mfa_accounts)
                .where(
                    mfa_accounts.c.user_id == user_id,
                    mfa_accounts.c.totp_confirmed_at.is_not(None),
                    or_(
                        mfa_accounts.c.totp_last_step.is_(None),
                        mfa_accounts.c.totp_last_step < step,
                    ),
                )
                .values(totp_last_step=step)
            ).rowcount
        return bool(changed)

    @translate_storage_errors
    def remove_totp(self, user_id: int, now: float) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(mfa_accounts)
                .where(
                    mfa_accounts.c.user_id == user_id,
                    mfa_accounts.c.totp_secret_enc.is_not(None),
                )
                .values(
                    totp_secret_enc=None,
                    totp_confirmed_at=None,
                    totp_last_step=None,
                    updated_at=now,
                )
            ).rowcount
        return bool(changed)

    @translate_storage_errors
    def record_failure(self, user_id: int, now: float, *, limit: int, block_for: float) -> None:
        with begin(self._engine) as conn:
            if self._exists(conn, user_id):
                conn.execute(
                    update(mfa_accounts)
                    .where(mfa_accounts.c.user_id == user_id)
                    .values(failed_attempts=mfa_accounts.c.failed_attempts + 1)
                )
            else:
                self._upsert(conn, user_id, now, failed_attempts=1)
            conn.execute(
                update(mfa_accounts)
                .where(mfa_accounts.c.user_id == user_id, mfa_accounts.c.failed_attempts >= limit)
                .values(failed_attempts=0, blocked_until=now + block_for)
            )

    @translate_storage_errors
    def clear_failures(self, user_id: int) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(mfa_accounts)
                .where(mfa_accounts.c.user_id == user_id, mfa_accounts.c.failed_attempts > 0)
                .values(failed_attempts=0)
            )

    @staticmethod
    def _exists(conn: Connection, user_id: int) -> bool:
        found = conn.execute(
            select(mfa_accounts.c.user_id).where(mfa_accounts.c.user_id == user_id)
        ).first()
        return found is not None

    # ------------------------------------------------------------------ recovery codes

    @translate_storage_errors
    def replace_recovery_codes(self, user_id: int, hashes: Sequence[str], now: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(delete(mfa_recovery_codes).where(mfa_recovery_codes.c.user_id == user_id))
            if hashes:
                conn.execute(
                    insert(mfa_recovery_codes),
                    [{"user_id": user_id, "code_hash": h, "created_at": now} for h in hashes],
                )

    @translate_storage_errors
    def use_recovery_code(self, user_id: int, code_hash: str, now: float) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(mfa_recovery_codes)
                .where(
                    mfa_recovery_codes.c.user_id == user_id,
                    mfa_recovery_codes.c.code_hash == code_hash,
                    mfa_recovery_codes.c.used_at.is_(None),
                )
                .values(used_at=now)
            ).rowcount
        return bool(changed)

    @translate_storage_errors
    def recovery_codes_left(self, user_id: int) -> int:
        with connect(self._engine) as conn:
            count = conn.execute(
                select(func.count()).where(
                    mfa_recovery_codes.c.user_id == user_id,
                    mfa_recovery_codes.c.used_at.is_(None),
                )
            ).scalar()
        return int(count or 0)

    # ------------------------------------------------------------------ passkeys

    @translate_storage_errors
    def passkeys(self, user_id: int) -> list[Passkey]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(mfa_passkeys)
                .where(mfa_passkeys.c.user_id == user_id)
                .order_by(mfa_passkeys.c.id)
            ).all()
        return [_passkey(r) for r in rows]

    @translate_storage_errors
    def passkey_by_credential(self, credential_id: str) -> Passkey | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(mfa_passkeys).where(mfa_passkeys.c.credential_id == credential_id)
            ).first()
        return None if row is None else _passkey(row)

    @translate_storage_errors
    def add_passkey(
        self,
        user_id: int,
        *,
        credential_id: str,
        public_key: bytes,
        sign_count: int,
        name: str,
        now: float,
    ) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(mfa_passkeys).values(
                    user_id=user_id,
                    credential_id=credential_id,
                    public_key=public_key,
                    sign_count=sign_count,
                    name=name,
                    created_at=now,
                )
            )

    @translate_storage_errors
    def record_passkey_use(self, credential_id: str, sign_count: int, now: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(mfa_passkeys)
                .where(mfa_passkeys.c.credential_id == credential_id)
                .values(sign_count=sign_count, last_used_at=now)
            )

    @translate_storage_errors
    def remove_passkey(self, user_id: int, passkey_id: int) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                delete(mfa_passkeys).where(
                    mfa_passkeys.c.user_id == user_id, mfa_passkeys.c.id == passkey_id
                )
            ).rowcount
        return bool(changed)

    @translate_storage_errors
    def save_challenge(
        self,
        handle_hash: str,
        *,
        purpose: str,
        user_id: int | None,
        challenge: str,
        expires_at: float,
    ) -> None:
        with begin(self._engine) as conn:
            # Expired challenges go as new ones come: the table holds minutes of ceremonies.
            conn.execute(
                delete(mfa_challenges).where(mfa_challenges.c.expires_at < expires_at - 3600)
            )
            conn.execute(
                insert(mfa_challenges).values(
                    handle_hash=handle_hash,
                    purpose=purpose,
                    user_id=user_id,
                    challenge=challenge,
                    expires_at=expires_at,
                )
            )

    @translate_storage_errors
    def take_challenge(
        self, handle_hash: str, *, purpose: str, now: float
    ) -> tuple[int | None, str] | None:
        with begin(self._engine) as conn:
            row = conn.execute(
                select(mfa_challenges).where(
                    mfa_challenges.c.handle_hash == handle_hash,
                    mfa_challenges.c.purpose == purpose,
                )
            ).first()
            if row is None:
                return None
            deleted = conn.execute(
                delete(mfa_challenges).where(mfa_challenges.c.handle_hash == handle_hash)
            ).rowcount
        m = row._mapping
        if not deleted or m["expires_at"] <= now:
            return None
        return m["user_id"], m["challenge"]

    # ------------------------------------------------------------------ remembered devices

    @translate_storage_errors
    def add_device(self, device: RememberedDevice) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(mfa_devices).values(
                    id=device.id,
                    user_id=device.user_id,
                    created_at=device.created_at,
                    expires_at=device.expires_at,
                    user_agent=device.user_agent,
                    ip=device.ip,
                )
            )

    @translate_storage_errors
    def device(self, device_id: str) -> RememberedDevice | None:
        with connect(self._engine) as conn:
            row = conn.execute(select(mfa_devices).where(mfa_devices.c.id == device_id)).first()
        return None if row is None else _device(row)

    @translate_storage_errors
    def devices(self, user_id: int, now: float) -> list[RememberedDevice]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(mfa_devices)
                .where(
                    mfa_devices.c.user_id == user_id,
                    mfa_devices.c.revoked_at.is_(None),
                    mfa_devices.c.expires_at > now,
                )
                .order_by(mfa_devices.c.created_at.desc())
            ).all()
        return [_device(r) for r in rows]

    @translate_storage_errors
    def touch_device(self, device_id: str, now: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(mfa_devices).where(mfa_devices.c.id == device_id).values(last_used_at=now)
            )

    @translate_storage_errors
    def revoke_device(self, user_id: int, device_id: str, now: float) -> bool:
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(mfa_devices)
                .where(
                    mfa_devices.c.user_id == user_id,
                    mfa_devices.c.id == device_id,
                    mfa_devices.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            ).rowcount
        return bool(changed)

    # ------------------------------------------------------------------ admin reset

    @translate_storage_errors
    def reset(self, user_id: int, now: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(mfa_accounts)
                .where(mfa_accounts.c.user_id == user_id)
                .values(
                    totp_secret_enc=None,
                    totp_confirmed_at=None,
                    totp_last_step=None,
                    updated_at=now,
                )
            )
            conn.execute(delete(mfa_recovery_codes).where(mfa_recovery_codes.c.user_id == user_id))
            conn.execute(delete(mfa_passkeys).where(mfa_passkeys.c.user_id == user_id))
            conn.execute(
                update(mfa_devices)
                .where(mfa_devices.c.user_id == user_id, mfa_devices.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )

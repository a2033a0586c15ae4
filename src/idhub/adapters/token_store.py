"""`TokenStorage` (core/token_storage.py) in SQL: authorization codes, refresh-token families,
revoked access-token ids and used client assertions.

Nothing here holds a usable credential: codes are stored by SHA-256, refresh tokens by keyed
hash; every state change that decides "first use or replay" is one conditional UPDATE or a
primary-key INSERT, so two replicas racing on the same code or refresh token cannot both win.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary, translate_storage_errors
from idhub.adapters.db import (
    authorization_codes,
    grant_access_tokens,
    refresh_families,
    refresh_tokens,
    revoked_tokens,
    used_assertions,
)
from idhub.adapters.driver_read import fetch_all
from idhub.adapters.unit_of_work import begin, connect, open_unit, writer_serial
from idhub.core.identity import User
from idhub.core.token_storage import CodeRecord, CodeStatus, RefreshFamily, Rotation

# Seconds a rotated token keeps its sealed successor (longer than any allowed grace window).
SEALED_SUCCESSOR_KEEP = 300.0


def _family(row: Any) -> RefreshFamily:
    m = row._mapping
    return RefreshFamily(
        id=m["id"],
        client_id=m["client_id"],
        user_id=m["user_id"],
        sid=m["sid"],
        scope=m["scope"],
        audience=m["audience"],
        auth_time=m["auth_time"],
        revoked_at=m["revoked_at"],
    )


_CODE_COLUMNS = (*(k for k in CodeRecord.__dataclass_fields__ if k != "amr"), "amr")


def _code_row(row: Sequence[Any]) -> CodeRecord:
    """A `_CODE_COLUMNS` driver row: `amr` is JSON text on SQLite, already a list on
    PostgreSQL."""
    values = dict(zip(_CODE_COLUMNS, row, strict=True))
    amr = values.pop("amr")
    if isinstance(amr, str | bytes):
        amr = json.loads(amr)
    return CodeRecord(**values, amr=list(amr or []))


# The user a code or refresh token is for, read in the same statement as the grant (a second
# round trip through the identity store cost as much as the lookup itself).
_USER_JOIN_COLUMNS = (
    "u.id, u.sub, u.username, u.display_name, u.email, u.phone, u.employee_id, "
    "u.department_id, d.path, u.source, u.external_id, u.dn, u.disabled, u.disabled_reason, "
    "u.failed_logins, u.locked_until, u.attributes"
)
_USER_JOIN = (
    "LEFT JOIN users u ON u.id = {user_id} LEFT JOIN departments d ON d.id = u.department_id"
)


def _joined_user(row: Sequence[Any]) -> User | None:
    """The `_USER_JOIN_COLUMNS` part of a row (None when the user is gone): `attributes` is
    JSON text on SQLite, already a dict on PostgreSQL."""
    if row[0] is None:
        return None
    attributes = row[16]
    if isinstance(attributes, str | bytes):
        attributes = json.loads(attributes)
    return User(
        id=row[0],
        sub=row[1],
        username=row[2],
        display_name=row[3] or "",
        email=row[4],
        phone=row[5],
        employee_id=row[6],
        department_id=row[7],
        department_path=row[8],
        source=row[9],
        external_id=row[10],
        dn=row[11],
        disabled=bool(row[12]),
        disabled_reason=row[13],
        failed_logins=row[14] or 0,
        locked_until=row[15],
        attributes=dict(attributes or {}),
    )


def _unit_cursor(engine: Engine) -> Any | None:
    """The driver cursor of the unit of work open on this thread (None when there is none):
    a grant's statements inside its write section go straight to it, without a connection
    context, a writer-turn check or a cursor of their own per call."""
    unit = open_unit(engine)
    return None if unit is None else unit.cursor()


def _cursor(conn: Connection) -> Any:
    """The driver cursor of `conn`, inside its transaction: the grants' statements run while
    every other writer waits (SQLite's write lock, a group's turn), and a driver call costs a
    fraction of SQLAlchemy's execution path (result metadata, statement cache). Driver errors
    escaping here are translated by `storage_boundary` like SQLAlchemy's."""
    return conn.connection.cursor()


@storage_boundary
class SqlTokenStore:
    """Every public method raises `StorageError` (or `StorageUnavailable`), never a
    SQLAlchemy error."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._mark = m = "%s" if engine.dialect.name == "postgresql" else "?"
        self._revoked_sql = f"SELECT 1 FROM revoked_tokens WHERE jti = {m}"  # noqa: S608
        # The code exchange's and the refresh's statements, built once from constants (they
        # run inside the write transaction every other writer waits for: driver SQL there
        # skips SQLAlchemy's statement construction and compile-cache lookups).
        self._consume_sql = (
            f"UPDATE authorization_codes SET used_at = {m} "  # noqa: S608 - placeholders only
            f"WHERE code_hash = {m} AND used_at IS NULL RETURNING expires_at"
        )
        self._code_used_sql = f"SELECT 1 FROM authorization_codes WHERE code_hash = {m}"  # noqa: S608
        self._code_user_sql = (
            f"SELECT {', '.join('c.' + c for c in _CODE_COLUMNS)}, c.used_at, "  # noqa: S608
            f"{_USER_JOIN_COLUMNS} FROM authorization_codes c "
            f"{_USER_JOIN.format(user_id='c.user_id')} WHERE c.code_hash = {m}"
        )
        self._family_sql = (
            "INSERT INTO refresh_families (id, client_id, user_id, sid, scope, audience, "  # noqa: S608
            f"auth_time, created_at, revoked_at) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m}, {m}, "
            "NULL)"
        )
        self._refresh_sql = (
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at, "  # noqa: S608
            f"rotated_at) VALUES ({m}, {m}, {m}, {m}, NULL)"
        )
        self._revoke_jti_sql = (
            "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) "  # noqa: S608
            f"VALUES ({m}, {m}, {m}) ON CONFLICT (jti) DO NOTHING"
        )
        self._grant_token_sql = (
            "INSERT INTO grant_access_tokens (grant_id, jti, expires_at) "  # noqa: S608
            f"VALUES ({m}, {m}, {m})"
        )
        self._find_refresh_sql = (
            "SELECT f.id, f.client_id, f.user_id, f.sid, f.scope, f.audience, f.auth_time, "  # noqa: S608
            "f.revoked_at, t.expires_at, t.rotated_at FROM refresh_tokens t "
            f"JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = {m}"
        )
        self._refresh_user_sql = (
            "SELECT f.id, f.client_id, f.user_id, f.sid, f.scope, f.audience, f.auth_time, "  # noqa: S608
            f"f.revoked_at, t.expires_at, t.rotated_at, {_USER_JOIN_COLUMNS} "
            "FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id "
            f"{_USER_JOIN.format(user_id='f.user_id')} WHERE t.token_hash = {m}"
        )
        self._rotate_sql = (
            "UPDATE refresh_tokens SET rotated_at = "  # noqa: S608 - placeholders only
            f"{m}, successor_hash = {m}, successor_sealed = {m} WHERE token_hash = {m} "
            f"AND rotated_at IS NULL AND expires_at > {m} "
            # Correlated on the primary key: an IN over all of a client's families
            # would scan them on every refresh.
            "AND EXISTS (SELECT 1 FROM refresh_families f WHERE f.id = "
            f"refresh_tokens.family_id AND f.client_id = {m} AND f.revoked_at IS NULL) "
            "RETURNING family_id"
        )
        self._rotated_sql = (
            "SELECT f.id, f.client_id, f.user_id, f.sid, f.scope, f.audience, f.auth_time, "  # noqa: S608 - placeholders only
            "f.revoked_at, t.rotated_at, t.expires_at, t.successor_sealed, s.rotated_at, "
            "s.expires_at FROM refresh_tokens t "
            "JOIN refresh_families f ON f.id = t.family_id "
            "LEFT JOIN refresh_tokens s ON s.token_hash = t.successor_hash "
            f"WHERE t.token_hash = {m}"
        )
        self._unrotate_sql = (
            "UPDATE refresh_tokens SET rotated_at = NULL, successor_hash = NULL, "  # noqa: S608 - placeholders only
            f"successor_sealed = NULL WHERE token_hash = {m}"
        )

    def _serial(self) -> contextlib.AbstractContextManager[Any]:
        # SQLite has one writer at a time and waits for the lock by sleeping in growing steps;
        # queueing this process's writers (units of work included) on one lock keeps those
        # sleeps (and the latency tail) for the rare collision with another process.
        return writer_serial(self._engine)

    # ------------------------------------------------------------------ codes

    @translate_storage_errors
    def save_code(self, record: CodeRecord) -> None:
        with begin(self._engine) as conn:
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

    @translate_storage_errors
    def find_code(self, code_hash: str, now: float) -> tuple[CodeStatus, CodeRecord | None]:
        status, record, _ = self.find_code_and_user(code_hash, now)
        return status, record

    @translate_storage_errors
    def find_code_and_user(
        self, code_hash: str, now: float
    ) -> tuple[CodeStatus, CodeRecord | None, User | None]:
        # A pooled driver connection, no SQLAlchemy Connection: this read is on every
        # exchange and costs less than building one.
        rows = fetch_all(self._engine, self._code_user_sql, (code_hash,))
        if not rows:
            return "unknown", None, None
        row = rows[0]
        width = len(_CODE_COLUMNS)
        record, user = _code_row(row[:width]), _joined_user(row[width + 1 :])
        if row[width] is not None:
            return "used", record, user
        return ("expired" if record.expires_at <= now else "ok"), record, user

    @translate_storage_errors
    def consume_code(self, code_hash: str, now: float) -> CodeStatus:
        """Marks the code used (first use only) and says what happened: one conditional
        UPDATE decides first use, so of two racing redemptions exactly one gets "ok"."""
        cursor = _unit_cursor(self._engine)
        if cursor is not None:
            return self._consume(cursor, code_hash, now)
        with self._serial(), begin(self._engine) as conn:
            cursor = _cursor(conn)
            try:
                return self._consume(cursor, code_hash, now)
            finally:
                cursor.close()

    def _consume(self, cursor: Any, code_hash: str, now: float) -> CodeStatus:
        cursor.execute(self._consume_sql, (now, code_hash))
        first = cursor.fetchall()
        if first:
            return "expired" if first[0][0] <= now else "ok"
        cursor.execute(self._code_used_sql, (code_hash,))
        return "used" if cursor.fetchall() else "unknown"

    # ------------------------------------------------------------------ refresh families

    @translate_storage_errors
    def start_family(
        self, family: RefreshFamily, *, token_hash: str, issued_at: float, expires_at: float
    ) -> None:
        family_row = (
            family.id, family.client_id, family.user_id, family.sid, family.scope,
            family.audience, family.auth_time, issued_at,
        )  # fmt: skip
        token_row = (token_hash, family.id, issued_at, expires_at)
        cursor = _unit_cursor(self._engine)
        if cursor is not None:
            cursor.execute(self._family_sql, family_row)
            cursor.execute(self._refresh_sql, token_row)
            return
        with self._serial(), begin(self._engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(self._family_sql, family_row)
            cursor.execute(self._refresh_sql, token_row)
            cursor.close()

    @translate_storage_errors
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
        """Swaps a current refresh token of `client_id` for a new one in its family, in one
        transaction (the caller's unit of work when one is open).

        The conditional UPDATE comes first so the transaction holds the write lock from its
        first statement (SQLite cannot upgrade a read snapshot under contention) and so two
        racing requests with one token cannot both win: on PostgreSQL the loser waits for the
        winner's row lock, then reads the winner's committed successor. Presenting a token
        that was already rotated is reuse and revokes the whole family - unless it was
        rotated at most `grace` seconds ago and its successor (stored `sealed` with the
        rotation) is still unused and unexpired: that is a retry ("grace": the successor is
        handed back, nothing changes). A token of another client is reported as unknown and
        left alone; a `scope` beyond the family's changes nothing ("invalid_scope"). Driver
        cursor SQL: this is the refresh hot path.

        `family`: the live family the token was found in a moment ago (`find_refresh_and_user`).
        A token never moves to another family and a family's columns other than its
        revocation never change, so when the UPDATE wins for a token of that family (its
        RETURNING says which) and within it, that is the family: not read again.
        """
        args = (token_hash, new_hash, now, expires_at, client_id, scope, sealed, grace, family)
        unit = open_unit(self._engine)
        if unit is not None:
            return self._rotate(unit.conn, unit.cursor(), *args)
        with self._serial(), begin(self._engine) as conn:
            cursor = _cursor(conn)
            try:
                return self._rotate(conn, cursor, *args)
            finally:
                cursor.close()

    def _rotate(
        self,
        conn: Connection,
        cursor: Any,
        token_hash: str,
        new_hash: str,
        now: float,
        expires_at: float,
        client_id: str,
        scope: list[str] | None,
        sealed: bytes | None,
        grace: float,
        known: RefreshFamily | None,
    ) -> Rotation:
        cursor.execute(
            self._rotate_sql,
            (now, new_hash, sealed if grace > 0 else None, token_hash, now, client_id),
        )
        won_in = cursor.fetchall()
        won = len(won_in)
        if (
            won == 1
            and known is not None
            and known.revoked_at is None
            and known.client_id == client_id
            and won_in[0][0] == known.id
            and (not scope or set(scope) <= set(known.scope.split()))
        ):
            cursor.execute(self._refresh_sql, (new_hash, known.id, now, expires_at))
            return Rotation("ok", known)
        cursor.execute(self._rotated_sql, (token_hash,))
        row = cursor.fetchone()
        if row is None or row[1] != client_id:
            # Nothing was written: the UPDATE checks the token and the client both.
            return Rotation("unknown", None)
        family = RefreshFamily(*row[:8])
        within_scope = not scope or set(scope) <= set(family.scope.split())
        if won == 1:
            if not within_scope:
                # Put the token back as it was: the caller's transaction may go on.
                cursor.execute(self._unrotate_sql, (token_hash,))
                return Rotation("invalid_scope", family)
            cursor.execute(self._refresh_sql, (new_hash, family.id, now, expires_at))
            return Rotation("ok", family)
        if family.revoked_at is not None:
            return Rotation("revoked", family)
        rotated_at, token_expires, successor = row[8], row[9], row[10]
        if rotated_at is None and token_expires <= now:
            return Rotation("expired", family)
        if _is_retry(rotated_at, successor, row[11], row[12], now=now, grace=grace):
            if not within_scope:
                return Rotation("invalid_scope", family)
            return Rotation("grace", family, bytes(successor))
        # Rotated before, and not a retry within the window: a replay.
        self._revoke(conn, [family.id], now, "refresh_token_reuse")
        return Rotation("reused", family)

    @translate_storage_errors
    def find_refresh_and_user(
        self, token_hash: str
    ) -> tuple[RefreshFamily, float, float | None, User | None] | None:
        rows = fetch_all(self._engine, self._refresh_user_sql, (token_hash,))
        if not rows:
            return None
        row = rows[0]
        return RefreshFamily(*row[:8]), float(row[8]), row[9], _joined_user(row[10:])

    @translate_storage_errors
    def find_refresh(self, token_hash: str) -> tuple[RefreshFamily, float, float | None] | None:
        """(family, expires_at, rotated_at) of a refresh token, for introspection/revocation
        and for the refresh grant's early signature."""
        with connect(self._engine) as conn:
            row = conn.exec_driver_sql(self._find_refresh_sql, (token_hash,)).first()
        if row is None:
            return None
        return RefreshFamily(*row[:8]), float(row[8]), row[9]

    @translate_storage_errors
    def revoke_family(self, family_id: str, now: float, reason: str) -> int:
        with begin(self._engine) as conn:
            return self._revoke(conn, [family_id], now, reason)

    @translate_storage_errors
    def revoke_families_where(
        self, *, now: float, reason: str, sid: str | None = None, user_id: int | None = None
    ) -> int:
        query = select(refresh_families.c.id).where(refresh_families.c.revoked_at.is_(None))
        if sid is not None:
            query = query.where(refresh_families.c.sid == sid)
        if user_id is not None:
            query = query.where(refresh_families.c.user_id == user_id)
        with begin(self._engine) as conn:
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

    @translate_storage_errors
    def revoke_jti(self, jti: str, *, expires_at: float, now: float) -> None:
        try:
            with begin(self._engine, savepoint=True) as conn:
                conn.execute(
                    insert(revoked_tokens).values(jti=jti, expires_at=expires_at, revoked_at=now)
                )
        except IntegrityError:
            pass  # already revoked: revocation is idempotent (RFC 7009)

    @translate_storage_errors
    def is_revoked(self, jti: str) -> bool:
        # On the path of every bearer check: a plain driver query (about a seventh of the same
        # query through the Core layer), as a lone read (adapters/driver_read.py): on a held
        # connection where there is one, in autocommit on PostgreSQL (one round trip, not
        # BEGIN, SELECT and the pool's ROLLBACK), on the unit's connection inside one. The
        # driver's own errors escape SQLAlchemy here; `storage_boundary` translates them.
        return bool(fetch_all(self._engine, self._revoked_sql, (jti,)))

    def revoked_since(self, since: float, now: float) -> list[tuple[str, float]]:
        """(jti, expires_at) of unexpired access tokens revoked at or after `since` (the
        table only holds unexpired ones, so this stays small): a replica's copy for outages."""
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(revoked_tokens.c.jti, revoked_tokens.c.expires_at).where(
                    revoked_tokens.c.revoked_at >= since, revoked_tokens.c.expires_at > now
                )
            ).all()
        return [(str(row[0]), float(row[1])) for row in rows]

    # ------------------------------------------------------------------ a grant's access tokens

    @translate_storage_errors
    def record_grant_token(self, grant_id: str, jti: str, *, expires_at: float) -> None:
        row = (grant_id, jti[:64], expires_at)
        cursor = _unit_cursor(self._engine)
        if cursor is not None:
            cursor.execute(self._grant_token_sql, row)
            return
        with self._serial(), begin(self._engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(self._grant_token_sql, row)
            cursor.close()

    @translate_storage_errors
    def revoke_grant_tokens(self, grant_id: str, *, now: float) -> int:
        """Copies the grant's unexpired access-token ids onto the revocation list in one
        transaction; ids already there stay as they are. Idempotent under concurrency too:
        several replays of one code racing each other revoke the same ids, and the loser of
        each insert skips it (`ON CONFLICT DO NOTHING`, SQLite and PostgreSQL alike) instead
        of failing the request."""
        with self._serial(), begin(self._engine) as conn:
            rows = conn.execute(
                select(grant_access_tokens.c.jti, grant_access_tokens.c.expires_at)
                .where(
                    grant_access_tokens.c.grant_id == grant_id,
                    grant_access_tokens.c.expires_at > now,
                )
                # One order for every revoker: two racing ones cannot deadlock on the rows.
                .order_by(grant_access_tokens.c.jti)
            ).all()
            cursor = _cursor(conn)
            added = 0
            for jti, expires_at in rows:
                cursor.execute(self._revoke_jti_sql, (jti, expires_at, now))
                added += max(0, cursor.rowcount)
            cursor.close()
        return added

    # ------------------------------------------------------------------ client assertions

    @translate_storage_errors
    def use_assertion(self, client_id: str, jti: str, *, expires_at: float) -> bool:
        """Records a private_key_jwt assertion id; False if it was seen before (a replay)."""
        try:
            with begin(self._engine, savepoint=True) as conn:
                conn.execute(
                    insert(used_assertions).values(
                        client_id=client_id, jti=jti[:200], expires_at=expires_at
                    )
                )
        except IntegrityError:
            return False
        return True

    @translate_storage_errors
    def purge(self, now: float, *, grace: float = 86400.0) -> dict[str, int]:
        """Drops rows that can no longer matter; returns how many of each.

        Expired codes and refresh tokens are kept for `grace` more seconds (a late replay is
        still recognised as one), revocations and assertion ids until their tokens expired.
        A family goes when none of its tokens is left.
        """
        counts: dict[str, int] = {}
        with self._serial(), begin(self._engine) as conn:
            counts["codes"] = conn.execute(
                delete(authorization_codes).where(authorization_codes.c.expires_at < now - grace)
            ).rowcount
            counts["refresh_tokens"] = conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.expires_at < now - grace)
            ).rowcount
            counts["refresh_families"] = conn.execute(
                delete(refresh_families).where(
                    refresh_families.c.created_at < now - grace,
                    ~select(refresh_tokens.c.token_hash)
                    .where(refresh_tokens.c.family_id == refresh_families.c.id)
                    .exists(),
                )
            ).rowcount
            # A sealed successor serves retries within the grace window (at most a minute);
            # past that it is dropped, so the database holds no usable token for long.
            conn.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.successor_sealed.is_not(None),
                    refresh_tokens.c.rotated_at < now - SEALED_SUCCESSOR_KEEP,
                )
                .values(successor_sealed=None)
            )
            counts["revoked_tokens"] = conn.execute(
                delete(revoked_tokens).where(revoked_tokens.c.expires_at < now)
            ).rowcount
            # Bookkeeping for revocation, not a kind of credential: dropped, not counted.
            conn.execute(delete(grant_access_tokens).where(grant_access_tokens.c.expires_at < now))
            counts["used_assertions"] = conn.execute(
                delete(used_assertions).where(used_assertions.c.expires_at < now)
            ).rowcount
        return {k: int(v) for k, v in counts.items()}


def _is_retry(
    rotated_at: float | None,
    successor: bytes | None,
    successor_rotated_at: float | None,
    successor_expires_at: float | None,
    *,
    now: float,
    grace: float,
) -> bool:
    """A rotated token presented again within the grace window, while the successor it was
    exchanged for is still unused and unexpired (once the client moved on, the old token
    coming back is a replay whatever the time)."""
    return (
        grace > 0
        and rotated_at is not None
        and now - rotated_at <= grace
        and successor is not None
        and successor_rotated_at is None
        and successor_expires_at is not None
        and successor_expires_at > now
    )

"""The throttle's counters in the database (`throttle_counters`), shared by every replica.

A failure is one upsert per key (`INSERT ... ON CONFLICT DO UPDATE` on SQLite and PostgreSQL)
whose update restarts the count when the window has passed or a lock has run out, so two
replicas counting the same key at once never lose a failure. Database errors are left to the
caller's handling of them (the token endpoint answers 503, as for any other table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import throttle_counters as t
from idhub.adapters.driver_read import fetch_all, placeholder
from idhub.adapters.sqlite_readonly import ReadOnlySqlite
from idhub.adapters.unit_of_work import begin, connect, open_unit
from idhub.core.throttle import CLIENT, CLIENT_IP, IP, Counter, ThrottleKey


def _to_counter(row: Any) -> Counter:
    m = row._mapping
    return Counter(
        kind=m["kind"],
        value=m["value"],
        failures=int(m["failures"]),
        last_failed_at=float(m["last_failed_at"]),
        locked_until=None if m["locked_until"] is None else float(m["locked_until"]),
    )


@storage_boundary
class SqlThrottleStore:
    def __init__(self, engine: Engine, *, readonly: ReadOnlySqlite | None = None) -> None:
        """`readonly`: the engine's SQLite file read without the pool (`readonly_sqlite`),
        for the counter read outside a unit of work: about a fifth of what the pooled read
        costs (adapters/sqlite_readonly.py). Without it every read takes the pool's way."""
        self._engine = engine
        self._mark = placeholder(engine)
        self._counters_sql: dict[int, str] = {}
        self._joint_sql: dict[int, str] = {}
        self._readonly = readonly

    def counters(self, keys: Sequence[ThrottleKey]) -> list[Counter]:
        # Read before every client authentication (token, introspection, revocation): a
        # driver query by primary key, not a Core statement (adapters/driver_read.py).
        if not keys:
            return []
        sql = self._counters_sql.get(len(keys))
        if sql is None:
            sql = "SELECT kind, value, failures, last_failed_at, locked_until " + self._where(
                len(keys)
            )
            self._counters_sql[len(keys)] = sql
        params = [part for key in keys for part in (key.kind, key.value)]
        return [_counter(*row) for row in self._fetch(sql, params)]

    def counters_and_revoked(
        self, keys: Sequence[ThrottleKey], jti: str
    ) -> tuple[list[Counter], bool]:
        """`counters(keys)` and whether access token `jti` is on the revocation list
        (`revoked_tokens`, as `SqlTokenStore.is_revoked` reads it), in one statement.

        For introspection, which asks both about every request: one read where there were
        two (on SQLite two lone reads, on PostgreSQL two pool checkouts and round trips).
        One statement is also one snapshot, so both answers are of the same moment; each is
        what its own query would have answered then, never a cached value."""
        sql = self._joint_sql.get(len(keys))
        if sql is None:
            # The first column tells the two apart: 1 for the revocation list's row.
            revoked = (
                "SELECT 1, jti, '', 0, 0, NULL FROM revoked_tokens "  # noqa: S608
                f"WHERE jti = {self._mark}"
            )
            sql = revoked
            if keys:
                sql = (
                    "SELECT 0, kind, value, failures, last_failed_at, locked_until "
                    f"{self._where(len(keys))} UNION ALL {revoked}"
                )
            self._joint_sql[len(keys)] = sql
        counters: list[Counter] = []
        found = False
        params = [part for key in keys for part in (key.kind, key.value)]
        params.append(jti)
        for source, *row in self._fetch(sql, params):
            if source:  # the revocation list's row
                found = True
            else:
                counters.append(_counter(*row))
        return counters, found

    def _where(self, count: int) -> str:
        one = f"(kind = {self._mark} AND value = {self._mark})"
        return f"FROM throttle_counters WHERE {' OR '.join([one] * count)}"

    def _fetch(self, sql: str, params: list[str]) -> list[Any]:
        rows = None
        if self._readonly is not None and open_unit(self._engine) is None:
            rows = self._readonly.fetch_all(sql, params)
        if rows is None:  # inside a unit of work, on PostgreSQL, or the file busy right now
            rows = fetch_all(self._engine, sql, params)
        return rows

    def add_failure(self, key: ThrottleKey, *, now: float, window: float) -> Counter:
        with begin(self._engine) as conn:
            self._upsert(conn, key, now=now, window=window)
            row = conn.execute(select(t).where(t.c.kind == key.kind, t.c.value == key.value)).one()
        return _to_counter(row)

    def _upsert(self, conn: Connection, key: ThrottleKey, *, now: float, window: float) -> None:
        restart = or_(
            t.c.last_failed_at < now - window,
            and_(t.c.locked_until.is_not(None), t.c.locked_until <= now),
        )
        changes = {
            "failures": case((restart, 1), else_=t.c.failures + 1),
            "first_failed_at": case((restart, now), else_=t.c.first_failed_at),
            "locked_until": case((restart, None), else_=t.c.locked_until),
            "last_failed_at": now,
        }
        fresh = {
            "kind": key.kind,
            "value": key.value,
            "failures": 1,
            "first_failed_at": now,
            "last_failed_at": now,
            "locked_until": None,
        }
        name = conn.dialect.name
        if name in ("postgresql", "sqlite"):
            dialect_insert: Any = postgresql.insert if name == "postgresql" else sqlite.insert
            conn.execute(
                dialect_insert(t)
                .values(**fresh)
                .on_conflict_do_update(index_elements=[t.c.kind, t.c.value], set_=changes)
            )
            return
        mine = and_(t.c.kind == key.kind, t.c.value == key.value)
        if conn.execute(update(t).where(mine).values(**changes)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(t.insert().values(**fresh))
        except IntegrityError:
            conn.execute(update(t).where(mine).values(**changes))

    def lock(self, key: ThrottleKey, *, until: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(t)
                .where(t.c.kind == key.kind, t.c.value == key.value)
                .values(locked_until=until)
            )

    def clear(self, keys: Sequence[ThrottleKey]) -> int:
        if not keys:
            return 0
        wanted = [(k.kind, k.value) for k in keys]
        with begin(self._engine) as conn:
            result = conn.execute(delete(t).where(tuple_(t.c.kind, t.c.value).in_(wanted)))
        return int(result.rowcount or 0)

    def clear_source(self, source: str) -> int:
        """Every counter of an address: its sign-in and client-auth counters, and the client
        ids tried from it."""
        condition = or_(
            and_(t.c.kind.in_((IP, CLIENT_IP)), t.c.value == source),
            and_(t.c.kind == CLIENT, t.c.value.endswith("@" + source, autoescape=True)),
        )
        with begin(self._engine) as conn:
            result = conn.execute(delete(t).where(condition))
        return int(result.rowcount or 0)

    def active(self, *, now: float, limit: int) -> list[Counter]:
        """The counters that exist, those locked now first, then by most recent failure."""
        locked_now = case((and_(t.c.locked_until.is_not(None), t.c.locked_until > now), 0), else_=1)
        query = select(t).order_by(locked_now, t.c.last_failed_at.desc()).limit(limit)
        with connect(self._engine) as conn:
            return [_to_counter(row) for row in conn.execute(query)]

    def purge(self, *, before: float, now: float) -> int:
        """Removes counters whose last failure is older than `before` and that hold no lock."""
        condition = and_(
            t.c.last_failed_at < before,
            or_(t.c.locked_until.is_(None), t.c.locked_until <= now),
        )
        with begin(self._engine) as conn:
            result = conn.execute(delete(t).where(condition))
        return int(result.rowcount or 0)


def _counter(kind: Any, value: Any, failures: Any, last: Any, locked: Any) -> Counter:
    """A counter from its row as the driver returns it."""
    return Counter(
        kind=str(kind),
        value=str(value),
        failures=int(failures),
        last_failed_at=float(last),
        locked_until=None if locked is None else float(locked),
    )

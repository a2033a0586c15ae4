"""Engine creation and schema migration. SQLite gets WAL and a busy timeout so the
threadpool and several worker processes can share one file; PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import storage_error, storage_error_with_detail
from idhub.config import DatabaseSettings, redact_url
from idhub.core.readiness import DatabaseClock
from idhub.errors import StorageError, StorageUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalise_url(url: str) -> str:
    # Users write postgresql://; SQLAlchemy would pick psycopg2, which we do not ship.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


# `[database] sqlite_synchronous` -> the PRAGMA's level (docs/deployment.md).
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def create_db_engine(settings: DatabaseSettings) -> Engine:
    url = normalise_url(settings.url)
    if settings.sqlite_synchronous not in _SYNCHRONOUS:
        raise StorageError(
            f"sqlite_synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
            f"not {settings.sqlite_synchronous!r}"
        )
    kwargs: dict[str, Any] = {"echo": settings.echo, "future": True}
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": settings.busy_timeout}
    else:
        kwargs["pool_size"] = settings.pool_size
        kwargs["max_overflow"] = settings.pool_overflow
        # No pre-ping: `_pg_deadline` checks each checkout for life without a round trip.
        kwargs["pool_timeout"] = settings.pool_timeout
        kwargs["connect_args"] = postgres_connect_args(settings, url)
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StorageError(f"cannot use database {redact_url(url)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(
            engine,
            "connect",
            _sqlite_pragmas(settings.busy_timeout, settings.sqlite_synchronous),
        )
        event.listen(engine, "checkin", _end_left_transaction)
    elif engine.dialect.name == "postgresql":
        from idhub.adapters._pg_deadline import install_deadlines

        install_deadlines(engine, settings)
    return engine


def postgres_connect_args(settings: DatabaseSettings, url: str = "") -> dict[str, Any]:
    """libpq parameters: the connect timeout, and the server-side statement timeout sent in
    the start-up packet (no extra round trip per connection), after any `options` the URL
    carries itself (`?options=-c search_path=idhub`)."""
    args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(settings.connect_timeout))}
    if settings.statement_timeout > 0:
        given = make_url(url).query.get("options", "") if url else ""
        given = given if isinstance(given, str) else " ".join(given)
        ours = f"-c statement_timeout={int(settings.statement_timeout * 1000)}"
        args["options"] = f"{given} {ours}".strip()
    return args


def _end_left_transaction(dbapi_connection: Any, record: Any) -> None:
    """Rolls back a transaction a SQLite connection still holds as it returns to the pool.
    A COMMIT that fails (a foreign key checked at COMMIT, a full disk, an I/O error) leaves
    SQLite's transaction open, and SQLAlchemy's pool does not roll back on return when the
    transaction was ended through the `Connection`: the connection would keep the write lock
    and hand the failed transaction's writes to whoever takes it next. One attribute read
    per return when nothing is left open."""
    if dbapi_connection is not None and dbapi_connection.in_transaction:
        try:
            dbapi_connection.rollback()
        except sqlite3.Error as exc:
            # Not even a rollback works: closed, and the pool opens a fresh one in its place.
            record.invalidate(exc)


def _sqlite_pragmas(busy_timeout: float, synchronous: str) -> Callable[[Any, Any], None]:
    # A name from the fixed table, never the setting's text, goes into the statement.
    level = _SYNCHRONOUS[synchronous]

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={level}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    return pragmas


if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic (with Mako and Pygments under it, ~10 MB) is imported when a migration or a schema
# check runs, not by every server worker that only opens the engine.

_MIGRATION_LOCK_KEY = 0x1D4B_0001
# Alembic keeps its migration context in module globals: one migration per process at a time.
_ALEMBIC_LOCK = threading.Lock()


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def apply_migrations(engine: Engine) -> None:
    """Brings the schema to the newest revision; safe to call on every start, and from several
    replicas at once (PostgreSQL: they queue on an advisory lock; SQLite: on its write lock)."""
    cfg = _alembic_config()
    try:
        with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # A migration may rewrite big tables: no statement timeout, on either side.
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            with unbounded(conn):
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
                cfg.attributes["connection"] = conn
                from alembic import command

                command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise storage_error_with_detail(exc, "database migration failed") from exc


@contextlib.contextmanager
def unbounded(conn: Connection) -> Iterator[None]:
    """Lifts idhub's own wait for answers on this connection (PostgreSQL) while inside."""
    driver: Any = conn.connection.driver_connection
    if not hasattr(driver, "answer_deadline"):
        yield
        return
    saved = driver.answer_deadline
    driver.answer_deadline = None
    try:
        yield
    finally:
        driver.answer_deadline = saved


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """SQLite runs DDL outside a transaction, so processes sharing one file take turns via
    an advisory file lock beside it."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_schema_current(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())


def check_database_reachable(engine: Engine) -> bool:
    """True when the database answers `SELECT 1` on a pooled connection."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def read_database_clock(engine: Engine, now: Callable[[], float]) -> DatabaseClock:
    """Pings the database and, on PostgreSQL, reads its clock in the same round trip; the
    offset is taken against the midpoint of the round trip on this replica's clock `now`."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                conn.execute(text("SELECT 1"))
                return DatabaseClock(reachable=True)
            before = now()
            server = conn.exec_driver_sql(
                "SELECT extract(epoch FROM clock_timestamp())::float8"
            ).scalar_one()
            after = now()
    except SQLAlchemyError as exc:
        unavailable = isinstance(storage_error(exc, "ping"), StorageUnavailable)
        return DatabaseClock(
            reachable=False,
            error="unreachable" if unavailable else f"failing ({type(exc).__name__})",
        )
    return DatabaseClock(reachable=True, offset=float(server) - (before + after) / 2)

"""The `[database]` timeouts reach the database: PostgreSQL's statement timeout (sent in the
start-up packet) cancels a slow statement as "unavailable", SQLite gets its busy timeout, and
migrations run without either bound. (A stalled server, which cancels nothing, is the fault
suite's: tests/test_faults_database.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from idhub.adapters._storage_errors import storage_error
from idhub.adapters.database import create_db_engine, unbounded
from idhub.config import DatabaseSettings, Settings
from idhub.errors import StorageUnavailable


def test_the_settings_are_read_from_the_file(
    make_settings: Callable[..., Settings], sqlite_db_url: str
) -> None:
    settings = make_settings(
        sqlite_db_url,
        toml=(
            "[database]\nconnect_timeout = 3\nstatement_timeout = 0.75\n"
            "pool_timeout = 0.5\nbusy_timeout = 2.5\n"
        ),
    )
    db = settings.database
    assert (db.connect_timeout, db.statement_timeout, db.pool_timeout, db.busy_timeout) == (
        3.0,
        0.75,
        0.5,
        2.5,
    )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_statement_past_the_timeout_is_cancelled_as_unavailable(db_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=db_url, statement_timeout=0.3))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "300ms"
            started = time.monotonic()
            with pytest.raises(Exception) as raised:
                conn.execute(text("SELECT pg_sleep(3)"))
            assert time.monotonic() - started < 1.5
        assert isinstance(storage_error(raised.value, "test"), StorageUnavailable)
        # What migrations do: no bound on either side for the transaction.
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            with unbounded(conn):
                started = time.monotonic()
                conn.execute(text("SELECT pg_sleep(0.8)"))
                assert time.monotonic() - started >= 0.8
    finally:
        engine.dispose()


def test_sqlite_gets_its_busy_timeout(tmp_path: Path) -> None:
    engine = create_db_engine(
        DatabaseSettings(url=f"sqlite:///{tmp_path / 'idhub.db'}", busy_timeout=2.5)
    )
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 2500
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_options_in_the_url_are_kept_beside_the_statement_timeout(db_url: str) -> None:
    url = f"{db_url}?options=-c%20application_name%3Didhub-test"
    engine = create_db_engine(DatabaseSettings(url=url, statement_timeout=0.4))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "400ms"
            assert conn.execute(text("SHOW application_name")).scalar_one() == "idhub-test"
    finally:
        engine.dispose()

from __future__ import annotations

import multiprocessing
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from idhub.adapters.database import apply_migrations, check_schema_current, create_db_engine
from idhub.adapters.db import metadata
from idhub.config import ConfigError, DatabaseSettings, load_settings
from idhub.errors import StorageError
from tests.conftest import PG_SERVER


def test_migrations_are_idempotent_and_complete(db_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=db_url))
    apply_migrations(engine)
    assert check_schema_current(engine)
    # Every table the code knows is created by the migrations, with every column.
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    engine.dispose()


def _migrate(url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=url))
    try:
        apply_migrations(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"idhub_empty_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_replicas_migrating_at_once_do_not_clash(empty_db_url: str) -> None:
    """Several processes (replicas) and threads creating the schema at once all succeed."""
    db_url = empty_db_url
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            _migrate(db_url)
        except BaseException as exc:
            errors.append(exc)

    ctx = multiprocessing.get_context("fork")
    processes = [ctx.Process(target=_migrate, args=(db_url,)) for _ in range(3)]
    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for p in processes:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        p.join(timeout=60)
    assert errors == []
    assert [p.exitcode for p in processes] == [0, 0, 0]
    engine = create_db_engine(DatabaseSettings(url=db_url))
    assert check_schema_current(engine)
    engine.dispose()


def test_participants_recorded_before_the_protocol_column_count_as_oidc(
    empty_db_url: str,
) -> None:
    """Sessions a running 0001 database already holds keep notifying their systems by OIDC
    back-channel logout after the upgrade."""
    from alembic import command

    from idhub.adapters.database import _alembic_config

    engine = create_db_engine(DatabaseSettings(url=empty_db_url))
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO session_clients (sid, client_id, first_at) VALUES ('s1', 'oa', 1)")
        )
    apply_migrations(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT client_id, protocol FROM session_clients")).all()
    assert [tuple(r) for r in rows] == [("oa", "oidc")]
    engine.dispose()


@pytest.mark.parametrize(("setting", "level"), [("normal", 1), ("full", 2)])
def test_sqlite_synchronous_setting_reaches_every_connection(
    tmp_path: Path, setting: str, level: int
) -> None:
    """`[database] sqlite_synchronous` is applied to each pooled SQLite connection (1 is
    NORMAL, 2 is FULL in SQLite's own numbering); "normal" is the default."""
    path = tmp_path / "idhub.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "x.db"}"\nsqlite_synchronous = "{setting}"\n'
    )
    settings = load_settings(path, env={})
    engine = create_db_engine(settings.database)
    try:
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
    finally:
        engine.dispose()
    if setting == "normal":
        assert DatabaseSettings(url="sqlite://").sqlite_synchronous == "normal"


def test_sqlite_synchronous_bad_value_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "idhub.toml"
    path.write_text('[database]\nsqlite_synchronous = "off"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.location == f"{path}:2"
    assert "normal, full" in str(info.value)
    with pytest.raises(StorageError, match="sqlite_synchronous must be one of normal, full"):
        create_db_engine(DatabaseSettings(url="sqlite://", sqlite_synchronous="off"))

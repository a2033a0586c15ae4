"""The suite's own PostgreSQL reset between tests (tests/db_reset.py): the state every
PostgreSQL test starts from, and that it is reached without rewriting the tables' files."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, func, select, text

from idhub.adapters.db import metadata
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.demo import seed_demo
from tests.db_reset import empty_postgres


def _row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


def test_a_filled_database_comes_back_empty_with_ids_from_one(
    pg_database: str,
    pg_reset_engine: Engine,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
) -> None:
    services = make_services(make_settings(pg_database))
    # Departments, users, groups and their members, clients, audit events, signing keys:
    # rows with foreign keys between them, so the order of the deletes matters.
    seed_demo(services, lambda _line: None)
    services.keys.ensure_active(lambda _line: None)
    filled = {name for name, count in _row_counts(pg_reset_engine).items() if count}
    assert {"users", "departments", "groups", "group_members", "clients"} <= filled

    empty_postgres(pg_reset_engine)

    assert not {name for name, count in _row_counts(pg_reset_engine).items() if count}
    with pg_reset_engine.connect() as conn:
        # The schema stays migrated...
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        # ...and ids start again from 1, as after TRUNCATE ... RESTART IDENTITY.
        assert conn.execute(text("SELECT nextval('users_id_seq')")).scalar_one() == 1
        assert conn.execute(text("SELECT nextval('clients_id_seq')")).scalar_one() == 1


def test_emptying_keeps_every_table_file(pg_database: str, pg_reset_engine: Engine) -> None:
    """TRUNCATE gives each table and index a new file and syncs them all at commit, ~0.5 s
    per test over ~420 PostgreSQL tests; deleting a few rows rewrites nothing."""

    def files() -> dict[str, int]:
        with pg_reset_engine.connect() as conn:
            return {
                table.name: conn.execute(
                    text("SELECT pg_relation_filenode(:name)"), {"name": table.name}
                ).scalar_one()
                for table in metadata.sorted_tables
            }

    before = files()
    with pg_reset_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO departments (name, path, source, created_at, updated_at) "
                "VALUES ('suite', '/suite', 'local', 0, 0)"
            )
        )
    empty_postgres(pg_reset_engine)
    assert files() == before

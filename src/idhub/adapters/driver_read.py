"""Reads on the hottest paths as plain driver queries on a pooled connection.

Building, caching and running a statement through SQLAlchemy Core costs several times the
query itself for a lookup by primary key (cProfile: ~70 % of an introspection was the client
throttle's counter read). These helpers run fixed SQL text straight on the DB-API cursor;
inside a unit of work they use its connection instead, so the read sees its own changes. The
driver's errors are left to the caller's `storage_boundary` to translate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from idhub.adapters.unit_of_work import open_unit


def placeholder(engine: Engine) -> str:
    """The driver's parameter mark: `%s` for psycopg, `?` for sqlite3."""
    return "%s" if engine.dialect.name == "postgresql" else "?"


def fetch_all(engine: Engine, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    unit = open_unit(engine)
    if unit is not None:
        return [tuple(row) for row in unit.conn.exec_driver_sql(sql, tuple(params))]
    connection = engine.raw_connection()
    driver = connection.driver_connection
    # psycopg opens a transaction for the first statement, so a lone read would be three round
    # trips (BEGIN, the SELECT, and the pool's ROLLBACK on return); in autocommit it is the
    # SELECT alone, and a single statement sees one snapshot either way. The connection is
    # idle here (the pool hands out none in a transaction), which the switch requires.
    autocommit = engine.dialect.name == "postgresql" and driver is not None
    try:
        if autocommit:
            driver.autocommit = True  # type: ignore[union-attr]
        cursor = connection.cursor()
        cursor.execute(sql, tuple(params))
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        if autocommit:
            driver.autocommit = False  # type: ignore[union-attr]
    except BaseException:
        # A failed round trip leaves the connection in an unknown state: never pool it.
        connection.invalidate()
        raise
    finally:
        connection.close()
    return rows

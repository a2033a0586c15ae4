"""Translation of database errors into idhub's `StorageError` tree at the store boundary, so
the layers above never see (or import) a database library's exceptions.

Two ways in, one rule: `translate_storage_errors` wraps one method, `storage_boundary` every
public method of a store class (what each `Sql*Store` uses, so a method added later cannot
forget it). Both catch SQLAlchemy's errors and the drivers' own (`sqlite3.Error`,
`psycopg.Error`), which escape SQLAlchemy on the paths that use a raw driver connection
(`database_errors()`).
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from idhub.errors import IdhubError, SchemaNotReady, StorageError, StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

# What the database (or the way to it) failing looks like, as opposed to a statement it refused.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
# The same, raised by a driver directly (a raw cursor): DB-API 2 names these classes alike.
_DBAPI_UNAVAILABLE = frozenset({"OperationalError", "InterfaceError"})
# A database that answers but lacks idhub's tables or columns: SQLSTATE 42P01 / 42703 on
# PostgreSQL; SQLite says it in words (it has no SQLSTATE). SQLite reports these as an
# OperationalError, so they are told apart before "cannot be reached" is concluded.
_MISSING_TABLE_STATES = frozenset({"42P01"})
_MISSING_COLUMN_STATES = frozenset({"42703"})
_MISSING_TABLE_WORDS = ("no such table",)
_MISSING_COLUMN_WORDS = ("no such column", "has no column named")
INIT_HINT = "the database has no idhub tables: run `idhub init` (or `idhub migrate`) first"
MIGRATE_HINT = "the database schema is older than this idhub: run `idhub migrate`"


def _schema_problem(exc: BaseException) -> str | None:
    driver = getattr(exc, "orig", None) or exc
    state = getattr(driver, "sqlstate", None)
    words = str(driver).lower()
    if state in _MISSING_TABLE_STATES or any(w in words for w in _MISSING_TABLE_WORDS):
        return INIT_HINT
    if state in _MISSING_COLUMN_STATES or any(w in words for w in _MISSING_COLUMN_WORDS):
        return MIGRATE_HINT
    return None


_ALWAYS = (SQLAlchemyError, sqlite3.Error)


def database_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a database failure can arrive as, for an `except` clause.

    psycopg's are included once psycopg is loaded, and psycopg is never imported here: only a
    process that has loaded it (SQLAlchemy does, to connect to PostgreSQL) can meet its errors,
    and a worker on SQLite is spared its ~10 MB. So this is asked when an error is matched, not
    fixed when this module is imported, which happens before any engine is made."""
    psycopg = sys.modules.get("psycopg")
    error = getattr(psycopg, "Error", None)  # None too while psycopg is still being imported
    return _ALWAYS if error is None else (*_ALWAYS, error)


_TRANSLATED = "__idhub_storage_boundary__"


def storage_error(exc: BaseException, what: str) -> StorageError:
    """The idhub error for a failed database call; the caller raises it `from exc`."""
    schema = _schema_problem(exc)
    if schema is not None:
        return SchemaNotReady(f"{what}: {schema}" if what else schema)
    if isinstance(exc, _UNAVAILABLE) or any(
        c.__name__ in _DBAPI_UNAVAILABLE for c in type(exc).__mro__
    ):
        return StorageUnavailable(_prefixed(what, "the database cannot be reached"))
    return StorageError(
        _prefixed(what, f"the database refused the statement ({type(exc).__name__})")
    )


def storage_error_with_detail(exc: BaseException, what: str) -> StorageError:
    """As `storage_error`, but a statement the database refused keeps the first line of the
    driver's reason (a constraint's name, say), which an admin running a sync can act on; the
    SQL and parameters that follow it never reach a message."""
    error = storage_error(exc, what)
    if type(error) is not StorageError:
        return error
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return StorageError(_prefixed(what, lines[0] if lines else type(exc).__name__))


def _prefixed(what: str, text: str) -> str:
    return f"{what}: {text}" if what else text


def _is_driver_error(exc: BaseException) -> bool:
    # DB-API 2 drivers (sqlite3, psycopg) all derive their errors from a `DatabaseError`.
    return any(c.__name__ == "DatabaseError" for c in type(exc).__mro__)


def as_idhub_error(exc: BaseException) -> IdhubError | None:
    """The idhub error a database failure that escaped a store unwrapped stands for (a method
    not decorated, a library calling the database itself), or None if `exc` (or what it was
    raised from) is not a database error. The CLI and the web layer ask this of anything
    unexpected, so such a failure still ends as one sentence, never a traceback."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, IdhubError):
            return seen
        if isinstance(seen, SQLAlchemyError) or _is_driver_error(seen):
            return storage_error(seen, "")
        seen = seen.__cause__ or seen.__context__
    return None


def translate_storage_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Wraps a store method so a database error leaves it as a `StorageError`."""
    if getattr(method, _TRANSLATED, False):
        return method
    what = method.__qualname__

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except database_errors() as exc:
            raise storage_error(exc, what) from exc

    setattr(wrapper, _TRANSLATED, True)
    return wrapper


def storage_boundary(cls: C) -> C:
    """Class decorator: every public method of a store translates database errors.
    Generators and context managers are left alone (they translate inside)."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        if inspect.isgeneratorfunction(member) or hasattr(member, "__wrapped__"):
            continue  # a generator, context manager or already-translated method
        setattr(cls, name, translate_storage_errors(member))
    return cls


def check_translated(method: Any) -> bool:
    """True when `method` translates database errors (for the architecture test)."""
    return bool(getattr(method, _TRANSLATED, False))

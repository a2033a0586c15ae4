"""Translation of database errors into idhub's `StorageError` tree at the store boundary, so
the layers above never see (or import) a database library's exceptions.

Two ways in, one rule: `translate_storage_errors` wraps one method, `storage_boundary` every
public method of a store class (what each `Sql*Store` uses, so a method added later cannot
forget it). Both catch SQLAlchemy's errors and the drivers' own (`sqlite3.Error`,
`psycopg.Error`), which escape SQLAlchemy on the paths that use a raw driver connection.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from idhub.errors import StorageError, StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

# What the database (or the way to it) failing looks like, as opposed to a statement it refused.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
# The same, raised by a driver directly (a raw cursor): DB-API 2 names these classes alike.
_DBAPI_UNAVAILABLE = frozenset({"OperationalError", "InterfaceError"})


def _driver_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [SQLAlchemyError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # an SQLite-only install
        return tuple(found)
    found.append(psycopg.Error)
    return tuple(found)


DATABASE_ERRORS = _driver_errors()
_TRANSLATED = "__idhub_storage_boundary__"


def storage_error(exc: BaseException, what: str) -> StorageError:
    """The idhub error for a failed database call; the caller raises it `from exc`."""
    if isinstance(exc, _UNAVAILABLE) or any(
        c.__name__ in _DBAPI_UNAVAILABLE for c in type(exc).__mro__
    ):
        return StorageUnavailable(f"{what}: the database cannot be reached")
    return StorageError(f"{what}: the database refused the statement ({type(exc).__name__})")


def translate_storage_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Wraps a store method so a database error leaves it as a `StorageError`."""
    if getattr(method, _TRANSLATED, False):
        return method
    what = method.__qualname__

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DATABASE_ERRORS as exc:
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

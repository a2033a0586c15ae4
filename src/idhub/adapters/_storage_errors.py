"""Translation of SQLAlchemy errors into idhub's `StorageError` tree at the store boundary, so
the layers above never see (or import) a database library's exceptions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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

# What the database (or the way to it) failing looks like, as opposed to a statement it refused.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
# The same, raised by a driver directly (a raw cursor): DB-API 2 names these classes alike.
_DBAPI_UNAVAILABLE = frozenset({"OperationalError", "InterfaceError"})


def storage_error(exc: BaseException, what: str) -> StorageError:
    """The idhub error for a failed database call; the caller raises it `from exc`."""
    if isinstance(exc, _UNAVAILABLE) or any(
        c.__name__ in _DBAPI_UNAVAILABLE for c in type(exc).__mro__
    ):
        return StorageUnavailable(f"{what}: the database cannot be reached")
    return StorageError(f"{what}: the database refused the statement ({type(exc).__name__})")


def translate_storage_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Wraps a store method so a SQLAlchemy error leaves it as a `StorageError`."""
    what = method.__qualname__

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise storage_error(exc, what) from exc

    return wrapper

"""People, departments and groups as idhub sees them, and the ports that store and verify them.

A user's `sub` is assigned once, at creation, from a random source: it is opaque (reveals no
username or employee number), stable across renames and moves, and never reused.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from idhub.errors import InvalidInput, NotFound

LOCAL_SOURCE = "local"


def new_subject() -> str:
    return secrets.token_hex(16)


def refuse_nul(fields: Mapping[str, Any]) -> None:
    """PostgreSQL stores no NUL in text and SQLite would: a person's field carrying one is
    refused with its name on both databases, never stored on one and a storage error on the
    other."""
    for name, value in fields.items():
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{name} must not contain a NUL character")


def normalise_department_path(path: str) -> str:
    """`总部/财务部/` -> `/总部/财务部`; refuses empty segments and control characters."""
    parts = [p.strip() for p in path.strip().strip("/").split("/")]
    if not parts or any(p == "" for p in parts):
        raise InvalidInput(f"department path {path!r} is not of the form /A/B/C")
    for part in parts:
        if any(ord(ch) < 32 for ch in part):
            raise InvalidInput(f"department path {path!r} contains control characters")
    return "/" + "/".join(parts)


def parent_paths(path: str) -> list[str]:
    """`/a/b/c` -> [`/a`, `/a/b`, `/a/b/c`]."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def is_within(path: str, ancestor: str) -> bool:
    """True if `path` is `ancestor` or below it (`/a/bc` is not below `/a/b`)."""
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def require_department(store: IdentityStore, path: str, *, create: bool) -> str:
    """The normalised `path` if the department exists (or `create` says to make it), else
    NotFound naming the deepest part of it that does exist. An admin typing a department for
    a person means one of the company's; a typo must not quietly start a new branch of the
    tree (which policies and data scopes would then treat as real)."""
    path = normalise_department_path(path)
    if create or store.get_department(path) is not None:
        return path
    existing = [p for p in parent_paths(path)[:-1] if store.get_department(p) is not None]
    nearest = f"; the nearest existing one is {existing[-1]}" if existing else ""
    raise NotFound(
        f"no department {path}{nearest}",
        hint="check the spelling, or pass --create-department to create it",
    )


@dataclass(frozen=True)
class User:
    id: int
    sub: str
    username: str
    display_name: str = ""
    email: str | None = None
    phone: str | None = None
    employee_id: str | None = None
    department_id: int | None = None
    department_path: str | None = None
    source: str = LOCAL_SOURCE
    external_id: str | None = None
    dn: str | None = None
    disabled: bool = False
    disabled_reason: str | None = None
    failed_logins: int = 0
    locked_until: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def is_locked(self, now: float) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class Department:
    id: int
    name: str
    path: str
    parent_id: int | None = None
    manager_user_id: int | None = None
    source: str = LOCAL_SOURCE
    external_id: str | None = None


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    source: str = LOCAL_SOURCE
    external_id: str | None = None


class IdentityStore(Protocol):
    def get_user(self, user_id: int) -> User | None: ...
    def get_user_by_username(self, username: str) -> User | None: ...
    def get_user_by_sub(self, sub: str) -> User | None: ...
    def password_hash(self, user_id: int) -> str | None: ...
    def create_user(
        self,
        *,
        username: str,
        display_name: str = "",
        email: str | None = None,
        phone: str | None = None,
        employee_id: str | None = None,
        department_path: str | None = None,
        source: str = LOCAL_SOURCE,
        external_id: str | None = None,
        password_hash: str | None = None,
    ) -> User: ...
    def update_user(self, user_id: int, **changes: Any) -> User: ...
    def set_password_hash(self, user_id: int, password_hash: str) -> None: ...
    def set_disabled(self, user_id: int, disabled: bool, *, reason: str | None = None) -> User: ...
    def register_failed_login(
        self, user_id: int, *, lock_after: int, lock_seconds: float
    ) -> User: ...
    def clear_failed_logins(self, user_id: int) -> None: ...
    def list_users(
        self, *, limit: int = 100, offset: int = 0, source: str | None = None
    ) -> list[User]: ...
    def ensure_department(self, path: str, *, source: str = LOCAL_SOURCE) -> Department: ...
    def get_department(self, path: str) -> Department | None: ...
    def set_department_manager(self, path: str, user_id: int | None) -> None: ...
    def user_groups(self, user_id: int) -> list[str]: ...
    def ensure_group(self, name: str, *, source: str = LOCAL_SOURCE) -> Group: ...
    def set_group_members(self, group_id: int, user_ids: Sequence[int]) -> None: ...
    def add_group_member(self, group_id: int, user_id: int) -> None: ...


class PasswordVerifier(Protocol):
    def verify(self, user: User, password: str) -> None:
        """Returns if `password` is right for `user`; raises `AuthenticationFailed(reason)`
        or `DirectoryUnavailable` otherwise."""
        ...

"""What SCIM needs from storage: the users and groups one source owns, keyed by SCIM id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class UserColumns:
    """The idhub identity a SCIM user maps to (what sign-in, tokens and policies read)."""

    username: str
    display_name: str
    email: str | None
    phone: str | None
    employee_id: str | None
    department: str | None  # a department path, made under the source when missing
    disabled_reason: str | None  # None: enabled


@dataclass(frozen=True)
class ScimRecord:
    scim_id: str
    doc: dict[str, Any]
    created: float
    updated: float
    internal_id: int
    deleted: bool = False
    # Groups only: SCIM ids of the members (users of the same source).
    members: tuple[str, ...] = field(default=())


class ScimStore(Protocol):
    def list_users(self, source: str) -> list[ScimRecord]: ...
    def get_user(self, source: str, scim_id: str) -> ScimRecord | None: ...
    def username_owner(self, username: str) -> tuple[str, str | None] | None:
        """(source, external id) of the user holding this username, if any."""
        ...

    def create_user(
        self, source: str, scim_id: str, columns: UserColumns, doc: dict[str, Any]
    ) -> int: ...
    def update_user(
        self,
        source: str,
        scim_id: str,
        columns: UserColumns,
        doc: dict[str, Any],
        *,
        deleted: bool = False,
    ) -> None: ...
    def list_groups(self, source: str) -> list[ScimRecord]: ...
    def get_group(self, source: str, scim_id: str) -> ScimRecord | None: ...
    def group_name_taken(self, name: str, *, except_id: str | None = None) -> bool: ...
    def save_group(
        self,
        source: str,
        scim_id: str,
        name: str,
        doc: dict[str, Any],
        members: Sequence[str],
        *,
        create: bool,
    ) -> None:
        """Members are SCIM ids of live users of `source` (checked by the caller)."""
        ...

    def delete_group(self, source: str, scim_id: str) -> None: ...
    def live_user_ids(self, source: str, scim_ids: Sequence[str]) -> set[str]: ...

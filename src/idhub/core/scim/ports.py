"""What SCIM needs from storage: the users and groups one source owns, keyed by SCIM id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class LinkView:
    """A person several sources describe: the row's values and every other link's word."""

    user_id: int
    creator: str
    username: str
    disabled_reason: str | None
    row: dict[str, Any]
    others: tuple[tuple[str, Mapping[str, Any] | None], ...]


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

    # One identity per person (core/directory/linking.py)
    def link_view(self, source: str, scim_id: str) -> LinkView | None: ...
    def person_view(self, user_id: int) -> LinkView | None: ...
    def link_candidates(self, keys: Mapping[str, str], *, country_code: str) -> dict[str, Any]: ...
    def link_user(
        self,
        source: str,
        scim_id: str,
        user_id: int,
        *,
        columns: UserColumns,
        doc: dict[str, Any],
        key: str | None,
        value_hash: str | None,
    ) -> None: ...
    def update_linked(
        self,
        source: str,
        scim_id: str,
        user_id: int,
        *,
        said: UserColumns,
        columns: UserColumns,
        doc: dict[str, Any],
        deleted: bool = False,
    ) -> None: ...
    def drop_link(self, source: str, scim_id: str) -> None: ...
    def reserved_id(self, source: str, username: str) -> tuple[str, bool] | None: ...
    def linked_by_username(self, source: str, username: str) -> list[str]:
        """SCIM ids of this source's links to people other sources made, by its userName."""
        ...

    def record_conflict(self, found: Mapping[str, Any]) -> None: ...

"""The ports a directory sync runs through: the source it reads, the store it writes,
the audit trail and the logout service. Adapters implement them; tests use the real ones."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.core.audit import Actor, PendingEvent
from idhub.core.directory.mapping import SourceDepartment, SourceGroup, SourceUser
from idhub.core.directory.plan import StoredUser, UserChange
from idhub.errors import DirectoryError


class TruncatedResult(DirectoryError):
    """The directory stopped a search early (size/time limit): the listing is partial."""

    code = "directory_truncated"

    def __init__(self, message: str, *, seen: int) -> None:
        super().__init__(message)
        self.seen = seen


# (user id, email, phone, employee_id, the sources linked to the user)
LinkPerson = tuple[int, str | None, str | None, str | None, frozenset[str]]


class UserPageLike(Protocol):
    users: list[SourceUser]
    problems: list[str]


class DirectorySource(Protocol):
    def user_pages(self, since: str | None = None) -> Iterator[UserPageLike]: ...
    def user_id_pages(self) -> Iterator[list[str]]: ...
    def groups(self, since: str | None = None) -> tuple[list[SourceGroup], list[str]]: ...
    def departments(self, since: str | None = None) -> list[SourceDepartment]: ...
    def member_of(self) -> dict[str, tuple[str, ...]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SyncState:
    high_water: str | None = None
    last_full_at: float | None = None
    last_incremental_at: float | None = None
    last_id_check_at: float | None = None


class SyncStore(Protocol):
    def acquire_lease(self, source: str, owner: str, *, ttl: float) -> str | None:
        """None when taken; otherwise the owner that held it before (or "")."""
        ...

    def renew_lease(self, source: str, owner: str, *, ttl: float) -> None: ...
    def release_lease(self, source: str, owner: str) -> None: ...
    def start_run(self, run_id: str, source: str, *, mode: str, dry_run: bool) -> None: ...
    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        counts: Mapping[str, Any],
        error: str | None,
        mode: str | None = None,
    ) -> None: ...
    def fail_stale_runs(self, source: str) -> int: ...
    def state(self, source: str) -> SyncState: ...
    def save_state(self, source: str, *, high_water: str | None, full: bool) -> None: ...
    def stored_users(
        self, source: str, external_ids: Collection[str] | None = None
    ) -> dict[str, StoredUser]: ...
    def enabled_ids(self, source: str) -> set[str]: ...
    def link_people(
        self,
    ) -> Iterator[tuple[int, str | None, str | None, str | None, frozenset[str]]]:
        """Every idhub user as (id, email, phone, employee_id, linked sources): what the
        link keys are matched against (core/directory/linking.py)."""
        ...

    def stored_people(self, user_ids: Collection[int]) -> dict[int, StoredUser]:
        """Users by id, every link of theirs in `others` (candidates for a new link)."""
        ...

    def record_conflicts(self, conflicts: Sequence[Mapping[str, Any]]) -> None: ...
    def usernames_taken(self, usernames: Collection[str]) -> dict[str, str]: ...
    def missing_departments(self, paths: Collection[str]) -> set[str]: ...
    def local_departments(self, paths: Collection[str]) -> set[str]: ...
    def ensure_departments(self, paths: Collection[str], *, source: str) -> dict[str, int]: ...
    def apply_users(
        self, changes: Sequence[UserChange], *, source: str, department_ids: Mapping[str, int]
    ) -> None: ...
    def user_ids_by_dn(self, source: str) -> dict[str, int]: ...
    def set_managers(self, managers: Mapping[str, int | None]) -> dict[str, tuple[Any, Any]]: ...
    def set_department_orders(self, orders: Mapping[str, int]) -> dict[str, tuple[Any, Any]]: ...
    def sync_groups(
        self, source: str, groups: Sequence[SourceGroup], members: Mapping[str, set[int]]
    ) -> tuple[dict[str, Any], list[str], list[PendingGroupChange]]: ...
    def bump_directory_counter(self) -> None: ...


@dataclass(frozen=True)
class PendingGroupChange:
    group: str
    added: tuple[int, ...]
    removed: tuple[int, ...]
    created: bool = False
    deleted: bool = False


class AuditPort(Protocol):
    def record_many(self, events: Sequence[PendingEvent]) -> None: ...


@dataclass(frozen=True)
class DutyReview:
    """What segregation of duties says about a sync's user changes: the external ids whose
    change is held back (it would add a `block` violation) and, for the report, every
    violation the changes would add (plain data, as `idhub policy sod --json` shows them)."""

    held_back: frozenset[str] = frozenset()
    violations: tuple[Mapping[str, Any], ...] = ()


class DutyReviewer(Protocol):
    """Segregation of duties over a planned sync (core/authz/sod_sync.py)."""

    def review(self, changes: Sequence[UserChange]) -> DutyReview: ...


class SessionTerminator(Protocol):
    def logout_user_everywhere(
        self, user_id: int, *, reason: str, actor: Actor, ctx: Any = None
    ) -> int: ...

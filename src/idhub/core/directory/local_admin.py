"""What an admin may set by hand in the directory: departments and groups no source provides.

A department or group carries the source that made it (`local`, `ldap:corp`, `dingtalk:hq`,
`scim:hr`). A source-owned object is that source's to change: the next sync would undo an
edit made here, so it is refused with a sentence naming the source. Local objects are the
admin's: departments are added, moved (the whole subtree is re-pathed in one unit of work with
its audit event, people keep their department ids) and given managers; groups are added and
their members set. A local group may hold people from any source; a local department may sit
under a source's department.

Names follow the directory's spelling rules (`core/identifiers.py`): two departments under one
parent, or two groups, told apart only by case or width are refused, and a person is found by
the canonical spelling of their username when nobody has the exact one.

Every change bumps the directory change counter in the same transaction, so the policy engine
recomputes departments, managers and groups exactly as it does after a sync.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from idhub.core.identifiers import canonical_name, canonical_path
from idhub.core.identity import LOCAL_SOURCE, is_within, normalise_department_path
from idhub.errors import Conflict, InvalidInput, NotFound

MAX_NAME = 200  # departments.name and groups.name are VARCHAR(200)
MAX_PATH = 1000  # departments.path is VARCHAR(1000)


# ------------------------------------------------------------------ values and the port


@dataclass(frozen=True)
class AdminDepartment:
    id: int
    name: str
    path: str
    parent_id: int | None
    source: str
    manager_id: int | None = None
    manager: str | None = None  # the manager's username
    users: int = 0  # people whose department this is (not counting sub-departments)


@dataclass(frozen=True)
class AdminGroup:
    id: int
    name: str
    source: str
    members: int = 0


@dataclass(frozen=True)
class Person:
    id: int
    sub: str
    username: str
    source: str
    disabled: bool


@dataclass(frozen=True)
class Moved:
    """(department id, new name, new path) for one department of a moved subtree."""

    id: int
    name: str
    path: str


class LocalDirectoryStore(Protocol):
    """Storage for admin edits; every call joins the caller's unit of work."""

    def departments(self) -> list[AdminDepartment]: ...
    def user_sources(self, department_ids: Sequence[int]) -> dict[str, int]: ...
    def add_department(self, *, name: str, path: str, parent_id: int | None) -> int: ...
    def move_departments(self, moved: Sequence[Moved], *, top: int, parent_id: int | None) -> None:
        """Re-paths every department of a subtree; `top` gets the new parent."""
        ...

    def set_department_manager(self, department_id: int, user_id: int | None) -> None: ...
    def remove_department(self, department_id: int) -> None: ...
    def person(self, username: str) -> Person | None: ...
    def people(self) -> list[Person]: ...
    def groups(self) -> list[AdminGroup]: ...
    def add_group(self, name: str) -> int: ...
    def members(self, group_id: int) -> list[Person]: ...
    def add_members(self, group_id: int, user_ids: Sequence[int]) -> None: ...
    def remove_members(self, group_id: int, user_ids: Sequence[int]) -> None: ...
    def remove_group(self, group_id: int) -> None: ...


class DirectoryCounter(Protocol):
    def bump_directory_counter(self) -> None: ...


# ------------------------------------------------------------------ rules


def require_local(kind: str, name: str, source: str) -> None:
    """Refuses an edit of an object a source owns, naming the source."""
    if source != LOCAL_SOURCE:
        raise InvalidInput(f"{kind} {name} is owned by {source}; change it there")


def require_name(kind: str, name: str) -> str:
    """A department or group name: trimmed, not empty, no control characters, at most
    MAX_NAME characters; a department name also holds no `/` (full-width included: it becomes
    a separator once spelled canonically) and is not `.` or `..`."""
    value = name.strip()
    if not value:
        raise InvalidInput(f"a {kind} needs a name")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidInput(f"{kind} name {name!r} contains control characters")
    if len(value) > MAX_NAME:
        raise InvalidInput(f"{kind} name {value[:20]!r}... is longer than {MAX_NAME} characters")
    if kind == "department":
        if "/" in unicodedata.normalize("NFKC", value):
            raise InvalidInput(f"department name {value!r} contains '/', the path separator")
        if value in (".", ".."):
            raise InvalidInput(f"department name {value!r} is not a name")
    return value


def find_department(departments: Sequence[AdminDepartment], path: str) -> AdminDepartment:
    """The department at `path` (any spelling `normalise_department_path` accepts; its
    canonical spelling when no department has the exact one), else NotFound naming the
    deepest existing ancestor."""
    wanted = normalise_department_path(path)
    by_path = {d.path: d for d in departments}
    if wanted in by_path:
        return by_path[wanted]
    canonical = _canonical_or_none(wanted)
    matches = [d for d in departments if canonical and _canonical_or_none(d.path) == canonical]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(sorted(d.path for d in matches))
        raise Conflict(f"{wanted} matches several departments ({names}); give the exact path")
    nearest = ""
    parts = wanted.strip("/").split("/")
    for depth in range(len(parts) - 1, 0, -1):
        above = "/" + "/".join(parts[:depth])
        if above in by_path:
            nearest = f"; the nearest existing one is {above}"
            break
    raise NotFound(f"no department {wanted}{nearest}")


def _canonical_or_none(path: str) -> str | None:
    try:
        return canonical_path(path)
    except InvalidInput:
        return None


def require_free_child(
    departments: Sequence[AdminDepartment], parent_id: int | None, name: str, path: str
) -> None:
    """Refuses a new child `name` of `parent_id` when a sibling has the same canonical name
    (or any department already holds `path`)."""
    wanted = canonical_name(name)
    for d in departments:
        if d.path == path or (d.parent_id == parent_id and canonical_name(d.name) == wanted):
            raise Conflict(f"department {d.path} already exists")
    if len(path) > MAX_PATH:
        raise InvalidInput(f"department path {path[:40]}... is longer than {MAX_PATH} characters")


def subtree(departments: Sequence[AdminDepartment], top: AdminDepartment) -> list[AdminDepartment]:
    """`top` and every department below it, parents first."""
    below = [d for d in departments if is_within(d.path, top.path)]
    return sorted(below, key=lambda d: (d.path.count("/"), d.path))


def plan_move(
    departments: Sequence[AdminDepartment],
    top: AdminDepartment,
    parent: AdminDepartment | None,
    name: str,
) -> list[Moved]:
    """The new name and path of every department of `top`'s subtree when it moves under
    `parent` (None: a root) as `name`. Refuses a cycle, a source-owned department in the
    subtree and a clash at the destination."""
    if parent is not None and is_within(parent.path, top.path):
        where = "itself" if parent.id == top.id else f"{parent.path}, one of its own departments"
        raise InvalidInput(f"department {top.path} cannot move under {where}")
    tree = subtree(departments, top)
    for d in tree:
        if d.source != LOCAL_SOURCE:
            raise InvalidInput(
                f"department {top.path} holds {d.path}, which is owned by {d.source}; "
                "a source's departments move in the source"
            )
    new_top = f"{parent.path if parent else ''}/{name}"
    others = [d for d in departments if d.id != top.id]
    require_free_child(others, parent.id if parent else None, name, new_top)
    moved = [Moved(top.id, name, new_top)]
    for d in tree[1:]:
        moved.append(Moved(d.id, d.name, new_top + d.path[len(top.path) :]))
    if any(len(m.path) > MAX_PATH for m in moved):
        raise InvalidInput(f"moving {top.path} makes paths longer than {MAX_PATH} characters")
    return moved


def find_person(store: LocalDirectoryStore, username: str) -> Person:
    """The user named `username`: the exact username, else the one whose canonical spelling
    matches (`Bob`, ` bob `, `ｂｏｂ` find bob); several canonical matches are a conflict."""
    exact = store.person(username)
    if exact is not None:
        return exact
    wanted = canonical_name(username)
    people = store.people()
    matches = [p for p in people if wanted and canonical_name(p.username) == wanted]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(sorted(p.username for p in matches))
        raise Conflict(f"{username!r} matches several users ({names}); give the exact username")
    raise NotFound(
        f"no user named {username!r}", hint=_close(username, [p.username for p in people])
    )


def find_group(groups: Sequence[AdminGroup], name: str) -> AdminGroup:
    """The group named `name` (exactly, else by canonical spelling), else NotFound."""
    value = name.strip()
    for group in groups:
        if group.name == value:
            return group
    wanted = canonical_name(value)
    matches = [g for g in groups if wanted and canonical_name(g.name) == wanted]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(sorted(g.name for g in matches))
        raise Conflict(f"{name!r} matches several groups ({names}); give the exact name")
    raise NotFound(f"no group named {value!r}", hint=_close(value, [g.name for g in groups]))


def _close(typed: str, names: Sequence[str]) -> str | None:
    """A "did you mean" hint naming a close existing name (a typo), else None. The cutoff is
    above difflib's default so that a name merely sharing letters is not offered."""
    spellings = [canonical_name(n) for n in names]
    found = difflib.get_close_matches(canonical_name(typed), spellings, n=1, cutoff=0.75)
    if not found:
        return None
    spelled = next(n for n in names if canonical_name(n) == found[0])
    return f"did you mean {spelled!r}?"

"""Departments an admin keeps by hand (`idhub department ...`): add, move, set a manager,
remove. The rules live in `local_admin.py`; this module holds each change together with its
audit event and the directory counter bump in one unit of work."""

from __future__ import annotations

from dataclasses import dataclass

from idhub.core.audit import Actor, EventType
from idhub.core.directory.local_admin import (
    AdminDepartment,
    DirectoryCounter,
    LocalDirectoryStore,
    find_department,
    find_person,
    plan_move,
    require_free_child,
    require_local,
    require_name,
    subtree,
)
from idhub.core.identity import LOCAL_SOURCE, normalise_department_path
from idhub.core.transactions import UnitOfWork
from idhub.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class MoveOutcome:
    before: str
    after: str
    departments: int  # the department and those below it, all re-pathed
    users: int  # people in them, whose department ids stay as they were


@dataclass(frozen=True)
class ManagerOutcome:
    path: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _target(path: str) -> str:
    return f"department:{path}"


class LocalDepartments:
    def __init__(
        self, store: LocalDirectoryStore, *, counter: DirectoryCounter, uow: UnitOfWork
    ) -> None:
        self._store = store
        self._counter = counter
        self._uow = uow

    def all(self) -> list[AdminDepartment]:
        # By segments, so a department's children follow it (`/A B` sorts before `/A/B`).
        return sorted(self._store.departments(), key=lambda d: d.path.split("/"))

    def get(self, path: str) -> AdminDepartment:
        return find_department(self._store.departments(), path)

    def add(self, path: str, *, actor: Actor) -> AdminDepartment:
        """A new local department; its parent must exist (any source's)."""
        wanted = normalise_department_path(path)
        parent_path, _, raw_name = wanted.rpartition("/")
        name = require_name("department", raw_name)
        with self._uow.atomic() as tx:
            departments = self._store.departments()
            parent = None
            if parent_path:
                try:
                    parent = find_department(departments, parent_path)
                except NotFound as exc:
                    raise NotFound(
                        f"no parent department {parent_path} for {wanted}",
                        hint=f"add {parent_path} first",
                    ) from exc
            new_path = f"{parent.path if parent else ''}/{name}"
            require_free_child(departments, parent.id if parent else None, name, new_path)
            new_id = self._store.add_department(
                name=name, path=new_path, parent_id=parent.id if parent else None
            )
            tx.record(
                EventType.DEPARTMENT_ADDED,
                actor=actor,
                target=_target(new_path),
                details={"path": new_path, "parent": parent.path if parent else None},
            )
            self._counter.bump_directory_counter()
        return AdminDepartment(new_id, name, new_path, parent.id if parent else None, LOCAL_SOURCE)

    def move(
        self, path: str, new_parent: str, *, name: str | None = None, actor: Actor
    ) -> MoveOutcome:
        """Moves a local department (and everything below it) under `new_parent` ("/" for the
        top of the tree), optionally renaming it."""
        with self._uow.atomic() as tx:
            departments = self._store.departments()
            top = find_department(departments, path)
            require_local("department", top.path, top.source)
            parent = None
            if new_parent.strip() != "/":
                parent = find_department(departments, new_parent)
            new_name = require_name("department", name) if name is not None else top.name
            if (parent.id if parent else None) == top.parent_id and new_name == top.name:
                tree = subtree(departments, top)
                return MoveOutcome(top.path, top.path, 0, sum(d.users for d in tree))
            moved = plan_move(departments, top, parent, new_name)
            ids = [m.id for m in moved]
            from_sources = {
                s: n for s, n in self._store.user_sources(ids).items() if s != LOCAL_SOURCE
            }
            if from_sources:
                source, count = sorted(from_sources.items())[0]
                raise InvalidInput(
                    f"department {top.path} holds {count} user(s) from {source}, which sets "
                    "their department; move them there"
                )
            users = sum(d.users for d in departments if d.id in set(ids))
            self._store.move_departments(moved, top=top.id, parent_id=parent.id if parent else None)
            tx.record(
                EventType.DEPARTMENT_MOVED,
                actor=actor,
                target=_target(moved[0].path),
                details={
                    "path": [top.path, moved[0].path],
                    "departments": len(moved),
                    "users": users,
                },
            )
            self._counter.bump_directory_counter()
        return MoveOutcome(top.path, moved[0].path, len(moved), users)

    def set_manager(self, path: str, username: str | None, *, actor: Actor) -> ManagerOutcome:
        """Makes `username` (an enabled user, from any source) the department's manager;
        None clears it."""
        with self._uow.atomic() as tx:
            department = find_department(self._store.departments(), path)
            require_local("department", department.path, department.source)
            person = None
            if username is not None:
                person = find_person(self._store, username)
                if person.disabled:
                    raise InvalidInput(f"user {person.username} is disabled; a manager must not be")
            after = person.username if person else None
            outcome = ManagerOutcome(department.path, department.manager, after)
            if department.manager_id == (person.id if person else None):
                return outcome
            self._store.set_department_manager(department.id, person.id if person else None)
            tx.record(
                EventType.DEPARTMENT_MANAGER_SET,
                actor=actor,
                target=_target(department.path),
                details={"manager": [department.manager, after]},
            )
            self._counter.bump_directory_counter()
        return outcome

    def remove(self, path: str, *, actor: Actor) -> str:
        """Removes a local department with no department and no person in it."""
        with self._uow.atomic() as tx:
            departments = self._store.departments()
            department = find_department(departments, path)
            require_local("department", department.path, department.source)
            children = [d.path for d in departments if d.parent_id == department.id]
            if children:
                shown = ", ".join(sorted(children)[:3]) + (", ..." if len(children) > 3 else "")
                raise InvalidInput(
                    f"department {department.path} still has {len(children)} department(s) "
                    f"below it ({shown}); move or remove them first"
                )
            if department.users:
                raise InvalidInput(
                    f"department {department.path} still has {department.users} user(s); "
                    "move them first"
                )
            self._store.remove_department(department.id)
            tx.record(
                EventType.DEPARTMENT_REMOVED,
                actor=actor,
                target=_target(department.path),
                details={"path": department.path, "manager": department.manager},
            )
            self._counter.bump_directory_counter()
        return department.path

"""The `LocalDirectoryStore` port (core/directory/local_admin.py): the reads and writes behind
`idhub department ...` and `idhub group ...`. Each call joins the caller's unit of work, so a
change, its audit event and the directory counter bump commit together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import departments, group_members, groups, users
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.directory.local_admin import AdminDepartment, AdminGroup, Moved, Person
from idhub.core.identity import LOCAL_SOURCE
from idhub.errors import Conflict

_PERSON = select(users.c.id, users.c.sub, users.c.username, users.c.source, users.c.disabled)


def _person(row: Any) -> Person:
    return Person(row.id, row.sub, row.username, row.source, bool(row.disabled))


@storage_boundary
class SqlDirectoryAdminStore:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    # ------------------------------------------------------------ departments

    def departments(self) -> list[AdminDepartment]:
        manager = users.alias("manager")
        counts = (
            select(users.c.department_id, func.count().label("n"))
            .where(users.c.department_id.is_not(None))
            .group_by(users.c.department_id)
            .subquery()
        )
        query = (
            select(
                departments.c.id,
                departments.c.name,
                departments.c.path,
                departments.c.parent_id,
                departments.c.source,
                departments.c.manager_user_id,
                manager.c.username,
                counts.c.n,
            )
            .select_from(
                departments.outerjoin(
                    manager, manager.c.id == departments.c.manager_user_id
                ).outerjoin(counts, counts.c.department_id == departments.c.id)
            )
            .order_by(departments.c.path)
        )
        with connect(self._engine) as conn:
            if conn.dialect.name == "postgresql" and conn.in_transaction():
                # A move or removal decides on this read: hold the rows until it commits.
                query = query.with_for_update(of=departments)
            return [
                AdminDepartment(
                    id=r.id,
                    name=r.name,
                    path=r.path,
                    parent_id=r.parent_id,
                    source=r.source,
                    manager_id=r.manager_user_id,
                    manager=r.username,
                    users=int(r.n or 0),
                )
                for r in conn.execute(query)
            ]

    def user_sources(self, department_ids: Sequence[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        ids = list(department_ids)
        with connect(self._engine) as conn:
            for start in range(0, len(ids), 500):
                for source, n in conn.execute(
                    select(users.c.source, func.count())
                    .where(users.c.department_id.in_(ids[start : start + 500]))
                    .group_by(users.c.source)
                ):
                    out[source] = out.get(source, 0) + int(n)
        return out

    def add_department(self, *, name: str, path: str, parent_id: int | None) -> int:
        now = self._clock.now()
        try:
            with begin(self._engine, savepoint=True) as conn:
                result = conn.execute(
                    insert(departments).values(
                        name=name,
                        path=path,
                        parent_id=parent_id,
                        source=LOCAL_SOURCE,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise Conflict(f"department {path} already exists") from None
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def move_departments(self, moved: Sequence[Moved], *, top: int, parent_id: int | None) -> None:
        now = self._clock.now()
        try:
            with begin(self._engine, savepoint=True) as conn:
                conn.execute(
                    update(departments).where(departments.c.id == top).values(parent_id=parent_id)
                )
                # No new path equals an old one (the move is refused when its destination is
                # taken, and a subtree cannot move into itself), so row order is free.
                conn.execute(
                    update(departments)
                    .where(departments.c.id == bindparam("_id"))
                    .values(name=bindparam("v_name"), path=bindparam("v_path"), updated_at=now),
                    [{"_id": m.id, "v_name": m.name, "v_path": m.path} for m in moved],
                )
        except IntegrityError:
            raise Conflict(f"department {moved[0].path} already exists") from None

    def set_department_manager(self, department_id: int, user_id: int | None) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(departments)
                .where(departments.c.id == department_id)
                .values(manager_user_id=user_id, updated_at=self._clock.now())
            )

    def remove_department(self, department_id: int) -> None:
        with begin(self._engine) as conn:
            conn.execute(delete(departments).where(departments.c.id == department_id))

    # ------------------------------------------------------------ people

    def person(self, username: str) -> Person | None:
        with connect(self._engine) as conn:
            row = conn.execute(_PERSON.where(users.c.username == username)).first()
        return None if row is None else _person(row)

    def people(self) -> list[Person]:
        with connect(self._engine) as conn:
            return [_person(r) for r in conn.execute(_PERSON)]

    # ------------------------------------------------------------ groups

    def groups(self) -> list[AdminGroup]:
        counts = (
            select(group_members.c.group_id, func.count().label("n"))
            .group_by(group_members.c.group_id)
            .subquery()
        )
        query = (
            select(groups.c.id, groups.c.name, groups.c.source, counts.c.n)
            .select_from(groups.outerjoin(counts, counts.c.group_id == groups.c.id))
            .order_by(groups.c.name)
        )
        with connect(self._engine) as conn:
            return [AdminGroup(r.id, r.name, r.source, int(r.n or 0)) for r in conn.execute(query)]

    def add_group(self, name: str) -> int:
        now = self._clock.now()
        try:
            with begin(self._engine, savepoint=True) as conn:
                result = conn.execute(
                    insert(groups).values(
                        name=name, source=LOCAL_SOURCE, created_at=now, updated_at=now
                    )
                )
        except IntegrityError:
            raise Conflict(f"group {name} already exists") from None
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def members(self, group_id: int) -> list[Person]:
        query = (
            _PERSON.join(group_members, group_members.c.user_id == users.c.id)
            .where(group_members.c.group_id == group_id)
            .order_by(users.c.username)
        )
        with connect(self._engine) as conn:
            return [_person(r) for r in conn.execute(query)]

    def add_members(self, group_id: int, user_ids: Sequence[int]) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(group_members), [{"group_id": group_id, "user_id": u} for u in user_ids]
            )
            self._touch(conn, group_id)

    def remove_members(self, group_id: int, user_ids: Sequence[int]) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.user_id.in_(user_ids)
                )
            )
            self._touch(conn, group_id)

    def remove_group(self, group_id: int) -> None:
        with begin(self._engine) as conn:
            conn.execute(delete(group_members).where(group_members.c.group_id == group_id))
            conn.execute(delete(groups).where(groups.c.id == group_id))

    def _touch(self, conn: Any, group_id: int) -> None:
        conn.execute(
            update(groups).where(groups.c.id == group_id).values(updated_at=self._clock.now())
        )

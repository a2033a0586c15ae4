"""A read-only snapshot of the directory for deriving roles: users with their department and
groups, departments with their managers, and a fingerprint that changes when any of that does.

Directory sync bumps the `directory` change counter; single-row edits made elsewhere may not,
so the fingerprint also folds in row counts, last update times and a checksum of memberships.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import (
    storage_boundary,
    storage_error_with_detail,
)
from idhub.adapters.db import change_counters, departments, group_members, groups, users
from idhub.adapters.unit_of_work import connect
from idhub.core.authz.model import DirectorySnapshot, DirectoryUser

COUNTER = "directory"


@storage_boundary
class SqlDirectoryView:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def fingerprint(self) -> str:
        try:
            with connect(self._engine) as conn:
                counter = conn.execute(
                    select(change_counters.c.value).where(change_counters.c.name == COUNTER)
                ).scalar()
                parts = [str(counter or 0)]
                for table in (users, departments, groups):
                    row = conn.execute(select(func.count(), func.max(table.c.updated_at))).one()
                    parts.append(f"{row[0]}:{row[1]}")
                row = conn.execute(
                    select(
                        func.count(),
                        func.sum(group_members.c.user_id * 7919 + group_members.c.group_id),
                    )
                ).one()
                parts.append(f"{row[0]}:{row[1]}")
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(exc, "cannot read the directory") from exc
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def snapshot(self) -> DirectorySnapshot:
        # Read first: if the directory moves while we read, the next poll sees a different
        # fingerprint and builds again.
        version = self.fingerprint()
        try:
            with connect(self._engine) as conn:
                dept_rows = conn.execute(
                    select(departments.c.id, departments.c.path, departments.c.manager_user_id)
                ).all()
                user_rows = conn.execute(
                    select(
                        users.c.id,
                        users.c.username,
                        users.c.sub,
                        users.c.department_id,
                        users.c.disabled,
                    )
                ).all()
                group_rows = conn.execute(select(groups.c.id, groups.c.name)).all()
                member_rows = conn.execute(
                    select(group_members.c.group_id, group_members.c.user_id)
                ).all()
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(exc, "cannot read the directory") from exc
        dept_path = {row.id: row.path for row in dept_rows}
        username = {row.id: row.username for row in user_rows}
        group_name = {row.id: row.name for row in group_rows}
        member_of: dict[int, list[str]] = defaultdict(list)
        for row in member_rows:
            name = group_name.get(row.group_id)
            if name is not None:
                member_of[row.user_id].append(name)
        snapshot_users = {
            row.username: DirectoryUser(
                username=row.username,
                sub=row.sub,
                department=dept_path.get(row.department_id),
                disabled=bool(row.disabled),
                groups=tuple(sorted(member_of.get(row.id, ()))),
            )
            for row in user_rows
        }
        managers = {
            row.path: username.get(row.manager_user_id) if row.manager_user_id else None
            for row in dept_rows
        }
        return DirectorySnapshot(
            users=snapshot_users,
            departments=managers,
            groups=frozenset(group_name.values()),
            version=version,
        )

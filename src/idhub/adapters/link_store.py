"""The `LinkStore` port (core/directory/link_admin.py): an admin's links and unlinks, and the
open identity conflicts, over `user_links` / `identity_conflicts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._links import record_row_on_links
from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import departments, identity_conflicts, user_links, users
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.directory.link_admin import LinkRow, Person
from idhub.errors import Conflict


@storage_boundary
class SqlLinkStore:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def person(self, username: str) -> Person | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(users.c.id, users.c.sub, users.c.username, users.c.source).where(
                    users.c.username == username
                )
            ).first()
            if row is None:
                return None
            links = conn.execute(
                select(
                    user_links.c.user_id,
                    user_links.c.source,
                    user_links.c.external_id,
                    user_links.c.linked_at,
                    user_links.c.linked_by,
                    user_links.c.key,
                )
                .where(user_links.c.user_id == row.id)
                .order_by(user_links.c.linked_at, user_links.c.id)
            ).all()
        return Person(row.id, row.sub, row.username, row.source, tuple(LinkRow(*r) for r in links))

    def link_owner(self, source: str, external_id: str) -> int | None:
        with connect(self._engine) as conn:
            value = conn.execute(
                select(user_links.c.user_id).where(
                    user_links.c.source == source, user_links.c.external_id == external_id
                )
            ).scalar()
        return None if value is None else int(value)

    def usernames(self, user_ids: Sequence[int]) -> dict[int, str]:
        with connect(self._engine) as conn:
            return {
                uid: name
                for uid, name in conn.execute(
                    select(users.c.id, users.c.username).where(users.c.id.in_(list(user_ids)))
                )
            }

    def add_link(self, user_id: int, source: str, external_id: str, *, linked_by: str) -> None:
        now = self._clock.now()
        try:
            with begin(self._engine) as conn:
                row = conn.execute(
                    select(
                        users.c.display_name,
                        users.c.email,
                        users.c.phone,
                        users.c.employee_id,
                        departments.c.path,
                        users.c.dn,
                        users.c.source,
                    )
                    .select_from(
                        users.outerjoin(departments, departments.c.id == users.c.department_id)
                    )
                    .where(users.c.id == user_id)
                ).one()
                said = {
                    "display_name": row.display_name,
                    "email": row.email,
                    "phone": row.phone,
                    "employee_id": row.employee_id,
                    "department": row.path,
                    "dn": row.dn,
                }
                # Until now the row was what the existing links said; it is recorded on them
                # before the new source's word starts to blend in.
                record_row_on_links(conn, user_id, said, creator=row.source, now=now)
                conn.execute(
                    insert(user_links).values(
                        user_id=user_id,
                        source=source,
                        external_id=external_id,
                        linked_at=now,
                        linked_by=linked_by,
                    )
                )
                conn.execute(
                    update(identity_conflicts)
                    .where(
                        identity_conflicts.c.source == source,
                        identity_conflicts.c.external_id == external_id,
                        identity_conflicts.c.resolved_at.is_(None),
                    )
                    .values(resolved_at=now, resolved_by=linked_by)
                )
        except IntegrityError as exc:
            raise Conflict(f"{source} {external_id} is already linked") from exc

    def remove_link(self, user_id: int, source: str) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                delete(user_links).where(
                    user_links.c.user_id == user_id, user_links.c.source == source
                )
            )

    def open_conflicts(self) -> list[dict[str, Any]]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(identity_conflicts)
                .where(identity_conflicts.c.resolved_at.is_(None))
                .order_by(identity_conflicts.c.first_seen, identity_conflicts.c.id)
            ).mappings()
            return [
                {
                    "source": r["source"],
                    "external_id": r["external_id"],
                    "username": r["username"],
                    "key": r["key"],
                    "reason": r["reason"],
                    "candidates": list(r["candidates"] or []),
                    "first_seen": r["first_seen"],
                    "last_seen": r["last_seen"],
                }
                for r in rows
            ]

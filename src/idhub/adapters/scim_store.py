"""The users and groups a SCIM source owns, in the same `users` / `groups` tables every source
writes (`source = "scim:<name>"`, `external_id` = the SCIM id). The document the source sent
lives in `attributes["scim"]` (users) and `groups.attributes` (groups); the identity columns
sign-in, tokens and policies read are kept in step with it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import group_members, groups, users
from idhub.adapters.identity_store import SqlIdentityStore
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.identity import new_subject
from idhub.core.scim.errors import uniqueness
from idhub.core.scim.ports import ScimRecord, UserColumns

_DELETED = "scim_deleted"


def _user_record(row: Any) -> ScimRecord:
    attributes = dict(row.attributes or {})
    return ScimRecord(
        scim_id=row.external_id,
        doc=dict(attributes.get("scim") or {}),
        created=row.created_at,
        updated=row.updated_at,
        internal_id=row.id,
        deleted=bool(attributes.get(_DELETED)),
    )


@storage_boundary
class SqlScimStore:
    def __init__(self, engine: Engine, clock: Clock, identity: SqlIdentityStore) -> None:
        self._engine = engine
        self._clock = clock
        self._identity = identity

    # ------------------------------------------------------------ users

    _USER = select(
        users.c.id, users.c.external_id, users.c.attributes, users.c.created_at, users.c.updated_at
    )

    def list_users(self, source: str) -> list[ScimRecord]:
        with connect(self._engine) as conn:
            rows = conn.execute(self._USER.where(users.c.source == source).order_by(users.c.id))
            return [_user_record(r) for r in rows]

    def get_user(self, source: str, scim_id: str) -> ScimRecord | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                self._USER.where(users.c.source == source, users.c.external_id == scim_id)
            ).first()
        return None if row is None else _user_record(row)

    def username_owner(self, username: str) -> tuple[str, str | None] | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(users.c.source, users.c.external_id).where(users.c.username == username)
            ).first()
        return None if row is None else (row.source, row.external_id)

    def live_user_ids(self, source: str, scim_ids: Sequence[str]) -> set[str]:
        return {r.scim_id for r in self.list_users(source) if not r.deleted} & set(scim_ids)

    def _columns(self, source: str, columns: UserColumns) -> dict[str, Any]:
        department_id = None
        if columns.department:
            department_id = self._identity.ensure_department(columns.department, source=source).id
        disabled = columns.disabled_reason is not None
        return {
            "username": columns.username,
            "display_name": columns.display_name,
            "email": columns.email,
            "phone": columns.phone,
            "employee_id": columns.employee_id,
            "department_id": department_id,
            "disabled": disabled,
            "disabled_reason": columns.disabled_reason,
        }

    def create_user(
        self, source: str, scim_id: str, columns: UserColumns, doc: dict[str, Any]
    ) -> int:
        now = self._clock.now()
        values = self._columns(source, columns)
        try:
            with begin(self._engine, savepoint=True) as conn:
                result = conn.execute(
                    insert(users).values(
                        **values,
                        sub=new_subject(),
                        source=source,
                        external_id=scim_id,
                        password_hash=None,
                        failed_logins=0,
                        attributes={"scim": doc},
                        disabled_at=now if values["disabled"] else None,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise uniqueness(f"userName {columns.username[:100]!r} is already taken") from exc
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def update_user(
        self,
        source: str,
        scim_id: str,
        columns: UserColumns,
        doc: dict[str, Any],
        *,
        deleted: bool = False,
    ) -> None:
        now = self._clock.now()
        values = self._columns(source, columns)
        attributes: dict[str, Any] = {"scim": doc}
        if deleted:
            attributes[_DELETED] = True
        where = (users.c.source == source, users.c.external_id == scim_id)
        try:
            with begin(self._engine, savepoint=True) as conn:
                row = conn.execute(select(users.c.disabled).where(*where)).first()
                if row is not None and bool(row.disabled) != values["disabled"]:
                    values["disabled_at"] = now if values["disabled"] else None
                conn.execute(
                    update(users)
                    .where(*where)
                    .values(**values, attributes=attributes, updated_at=now)
                )
                if deleted:
                    # Gone for the source: out of its groups too (other groups keep the person).
                    owned = select(groups.c.id).where(groups.c.source == source)
                    person = select(users.c.id).where(*where)
                    conn.execute(
                        delete(group_members).where(
                            group_members.c.group_id.in_(owned),
                            group_members.c.user_id.in_(person),
                        )
                    )
        except IntegrityError as exc:
            raise uniqueness(f"userName {columns.username[:100]!r} is already taken") from exc

    # ------------------------------------------------------------ groups

    def _group_records(self, conn: Any, source: str, scim_id: str | None) -> list[ScimRecord]:
        query = select(
            groups.c.id,
            groups.c.external_id,
            groups.c.attributes,
            groups.c.created_at,
            groups.c.updated_at,
        ).where(groups.c.source == source)
        if scim_id is not None:
            query = query.where(groups.c.external_id == scim_id)
        rows = list(conn.execute(query.order_by(groups.c.id)))
        members: dict[int, list[str]] = {r.id: [] for r in rows}
        if rows:
            pairs = conn.execute(
                select(group_members.c.group_id, users.c.external_id)
                .join(users, users.c.id == group_members.c.user_id)
                .where(group_members.c.group_id.in_(list(members)), users.c.source == source)
                .order_by(users.c.id)
            )
            for group_id, external_id in pairs:
                members[group_id].append(external_id)
        return [
            ScimRecord(
                scim_id=r.external_id,
                doc=dict(r.attributes or {}),
                created=r.created_at,
                updated=r.updated_at,
                internal_id=r.id,
                members=tuple(members[r.id]),
            )
            for r in rows
        ]

    def list_groups(self, source: str) -> list[ScimRecord]:
        with connect(self._engine) as conn:
            return self._group_records(conn, source, None)

    def get_group(self, source: str, scim_id: str) -> ScimRecord | None:
        with connect(self._engine) as conn:
            found = self._group_records(conn, source, scim_id)
        return found[0] if found else None

    def group_name_taken(self, name: str, *, except_id: str | None = None) -> bool:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(groups.c.source, groups.c.external_id).where(groups.c.name == name)
            ).first()
        return row is not None and (except_id is None or row.external_id != except_id)

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
        now = self._clock.now()
        try:
            with begin(self._engine, savepoint=True) as conn:
                if create:
                    conn.execute(
                        insert(groups).values(
                            name=name,
                            source=source,
                            external_id=scim_id,
                            attributes=doc,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                else:
                    conn.execute(
                        update(groups)
                        .where(groups.c.source == source, groups.c.external_id == scim_id)
                        .values(name=name, attributes=doc, updated_at=now)
                    )
                group_id = conn.execute(
                    select(groups.c.id).where(
                        groups.c.source == source, groups.c.external_id == scim_id
                    )
                ).scalar_one()
                user_ids = conn.execute(
                    select(users.c.id).where(
                        users.c.source == source, users.c.external_id.in_(list(members))
                    )
                ).scalars()
                conn.execute(delete(group_members).where(group_members.c.group_id == group_id))
                rows = [{"group_id": group_id, "user_id": uid} for uid in sorted(set(user_ids))]
                if rows:
                    conn.execute(insert(group_members), rows)
        except IntegrityError as exc:
            raise uniqueness(f"a group named {name[:100]!r} already exists") from exc

    def delete_group(self, source: str, scim_id: str) -> None:
        with begin(self._engine) as conn:
            group_id = conn.execute(
                select(groups.c.id).where(
                    groups.c.source == source, groups.c.external_id == scim_id
                )
            ).scalar_one_or_none()
            if group_id is not None:
                conn.execute(delete(group_members).where(group_members.c.group_id == group_id))
                conn.execute(delete(groups).where(groups.c.id == group_id))

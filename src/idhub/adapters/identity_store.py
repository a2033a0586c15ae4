"""Users, departments and groups in the database (the single-row operations; directory sync
writes in bulk through its own store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary, translate_storage_errors
from idhub.adapters.db import (
    departments,
    group_members,
    groups,
    password_history,
    user_links,
    users,
)
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.identifiers import canonical_name
from idhub.core.identity import (
    LOCAL_SOURCE,
    Department,
    Group,
    User,
    new_subject,
    normalise_department_path,
    parent_paths,
    refuse_nul,
)
from idhub.errors import Conflict, InvalidInput, NotFound

# The columns that are a source's word about a person (user_links.attrs).
_SAID = {"display_name", "email", "phone", "employee_id"}
_UPDATABLE = {
    "username",
    "display_name",
    "email",
    "phone",
    "employee_id",
    "department_id",
    "source",
    "external_id",
    "dn",
    "attributes",
}

_USER_COLUMNS = [c for c in users.c if c.name != "password_hash"]


def _user_query() -> Any:
    return select(*_USER_COLUMNS, departments.c.path.label("department_path")).select_from(
        users.outerjoin(departments, users.c.department_id == departments.c.id)
    )


# Built once: asked on every token, CAS validation and SAML response (building a statement
# costs more than running it).
_USER_GROUPS = (
    select(groups.c.name)
    .join(group_members, group_members.c.group_id == groups.c.id)
    .where(group_members.c.user_id == bindparam("user_id"))
    .order_by(groups.c.name)
)


def _to_user(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        id=m["id"],
        sub=m["sub"],
        username=m["username"],
        display_name=m["display_name"] or "",
        email=m["email"],
        phone=m["phone"],
        employee_id=m["employee_id"],
        department_id=m["department_id"],
        department_path=m["department_path"],
        source=m["source"],
        external_id=m["external_id"],
        dn=m["dn"],
        disabled=bool(m["disabled"]),
        disabled_reason=m["disabled_reason"],
        failed_logins=m["failed_logins"] or 0,
        locked_until=m["locked_until"],
        attributes=dict(m["attributes"] or {}),
    )


def _to_department(row: Row[Any]) -> Department:
    m = row._mapping
    return Department(
        id=m["id"],
        name=m["name"],
        path=m["path"],
        parent_id=m["parent_id"],
        manager_user_id=m["manager_user_id"],
        source=m["source"],
        external_id=m["external_id"],
    )


@storage_boundary
class SqlIdentityStore:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    # ------------------------------------------------------------------ users

    @translate_storage_errors
    def get_user(self, user_id: int) -> User | None:
        return self._one(_user_query().where(users.c.id == user_id))

    def get_user_by_username(self, username: str) -> User | None:
        return self._one(_user_query().where(users.c.username == username))

    @translate_storage_errors
    def get_user_by_sub(self, sub: str) -> User | None:
        return self._one(_user_query().where(users.c.sub == sub))

    def require_user(self, username: str) -> User:
        user = self.get_user_by_username(username)
        if user is None:
            raise NotFound(f"no user named {username!r}")
        return user

    def password_hash(self, user_id: int) -> str | None:
        with connect(self._engine) as conn:
            value = conn.execute(
                select(users.c.password_hash).where(users.c.id == user_id)
            ).scalar()
        return None if value is None else str(value)

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
    ) -> User:
        username = username.strip()
        if not username or any(ord(ch) < 32 for ch in username) or len(username) > 200:
            raise InvalidInput(f"{username!r} is not a usable username")
        refuse_nul(
            {"display name": display_name, "email": email, "phone": phone,
             "employee id": employee_id, "external id": external_id}
        )  # fmt: skip
        now = self._clock.now()
        department_id = None
        if department_path:
            department_id = self.ensure_department(department_path).id
        try:
            with begin(self._engine) as conn:
                result = conn.execute(
                    insert(users).values(
                        sub=new_subject(),
                        username=username,
                        display_name=display_name,
                        email=email,
                        phone=phone,
                        employee_id=employee_id,
                        department_id=department_id,
                        source=source,
                        external_id=external_id,
                        password_hash=password_hash,
                        disabled=False,
                        failed_logins=0,
                        attributes={},
                        created_at=now,
                        updated_at=now,
                    )
                )
                user_id = result.inserted_primary_key[0]  # type: ignore[index]
                if external_id is not None:
                    # A source-made user's creating link (one identity per person).
                    conn.execute(
                        insert(user_links).values(
                            user_id=user_id,
                            source=source,
                            external_id=external_id,
                            linked_at=now,
                            linked_by="created",
                        )
                    )
        except IntegrityError:
            raise Conflict(f"a user named {username!r} already exists") from None
        created = self.get_user(int(user_id))
        assert created is not None
        return created

    def update_user(self, user_id: int, **changes: Any) -> User:
        unknown = set(changes) - _UPDATABLE - {"department_path"}
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
        refuse_nul(changes)
        said = {k: v for k, v in changes.items() if k in _SAID}
        if "department_path" in changes:
            path = changes.pop("department_path")
            said["department"] = path or None
            changes["department_id"] = self.ensure_department(path).id if path else None
        try:
            with begin(self._engine) as conn:
                found = conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(**changes, updated_at=self._clock.now())
                ).rowcount
                if said:
                    self._record_local_word(conn, user_id, said)
        except IntegrityError:
            raise Conflict("the change clashes with another user") from None
        if not found:
            raise NotFound(f"no user with id {user_id}")
        user = self.get_user(user_id)
        assert user is not None
        return user

    @staticmethod
    def _record_local_word(conn: Any, user_id: int, said: dict[str, Any]) -> None:
        """An admin's edit of a linked local account is the `local` source's new word
        (core/directory/linking.py precedence), not a value the next sync overrides."""
        row = conn.execute(
            select(user_links.c.id, user_links.c.attrs).where(
                user_links.c.user_id == user_id, user_links.c.source == LOCAL_SOURCE
            )
        ).first()
        if row is not None:
            conn.execute(
                update(user_links)
                .where(user_links.c.id == row.id)
                .values(attrs={**(row.attrs or {}), **said})
            )

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash, updated_at=self._clock.now())
            )

    def replace_password_hash(self, user_id: int, password_hash: str, *, keep: int) -> None:
        """Sets a new password hash and keeps the one it replaces among the user's `keep`
        most recent earlier hashes (older ones are removed), in one transaction."""
        now = self._clock.now()
        with begin(self._engine) as conn:
            current = conn.execute(
                select(users.c.password_hash).where(users.c.id == user_id)
            ).scalar()
            if current and keep > 0:
                conn.execute(
                    insert(password_history).values(
                        user_id=user_id, password_hash=current, created_at=now
                    )
                )
            kept = (
                select(password_history.c.id)
                .where(password_history.c.user_id == user_id)
                .order_by(password_history.c.id.desc())
                .limit(max(keep, 0))
            )
            conn.execute(
                delete(password_history).where(
                    password_history.c.user_id == user_id,
                    password_history.c.id.not_in(kept.scalar_subquery()),
                )
            )
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash, updated_at=now)
            )

    def previous_password_hashes(self, user_id: int, *, limit: int) -> list[str]:
        """The user's current hash and up to `limit` - 1 earlier ones, newest first."""
        if limit <= 0:
            return []
        current = self.password_hash(user_id)
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(password_history.c.password_hash)
                .where(password_history.c.user_id == user_id)
                .order_by(password_history.c.id.desc())
                .limit(limit)
            ).all()
        found = ([current] if current else []) + [str(r[0]) for r in rows]
        return found[:limit]

    def set_disabled(self, user_id: int, disabled: bool, *, reason: str | None = None) -> User:
        now = self._clock.now()
        with begin(self._engine) as conn:
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    disabled=disabled,
                    disabled_reason=reason if disabled else None,
                    disabled_at=now if disabled else None,
                    updated_at=now,
                )
            )
        user = self.get_user(user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        return user

    def register_failed_login(self, user_id: int, *, lock_after: int, lock_seconds: float) -> User:
        now = self._clock.now()
        with begin(self._engine) as conn:
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(failed_logins=users.c.failed_logins + 1)
            )
            count = conn.execute(
                select(users.c.failed_logins).where(users.c.id == user_id)
            ).scalar_one()
            if count >= lock_after:
                conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(locked_until=now + lock_seconds, failed_logins=0)
                )
        user = self.get_user(user_id)
        assert user is not None
        return user

    def set_locked_until(self, user_id: int, until: float | None) -> None:
        """Marks the account locked until `until` (the throttle decided; None unlocks)."""
        with begin(self._engine) as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(locked_until=until))

    def clear_failed_logins(self, user_id: int) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(failed_logins=0, locked_until=None)
            )

    def list_users(
        self, *, limit: int = 100, offset: int = 0, source: str | None = None
    ) -> list[User]:
        query = _user_query().order_by(users.c.username).limit(limit).offset(offset)
        if source is not None:
            query = query.where(users.c.source == source)
        with connect(self._engine) as conn:
            return [_to_user(row) for row in conn.execute(query)]

    @translate_storage_errors
    def users_matching(self, attribute: str, value: str, *, limit: int) -> list[User]:
        """Up to `limit` users whose `attribute` ("email", "username" or "employee_id") is
        `value` in canonical form (`core.identifiers.canonical_name`), disabled ones included.

        The database narrows by lower(trim(column)) and the canonical comparison decides. SQLite's
        lower() folds ASCII only, so there a stored non-ASCII value matches when it is stored
        folded already (PostgreSQL folds by its collation)."""
        if attribute not in ("email", "username", "employee_id"):
            raise InvalidInput(f"cannot look users up by {attribute!r}")
        wanted = canonical_name(value)
        if not wanted:
            return []
        column = users.c[attribute]
        query = (
            _user_query()
            .where(func.lower(func.trim(column)) == wanted)
            .order_by(users.c.id)
            .limit(limit)
        )
        with connect(self._engine) as conn:
            rows = [_to_user(row) for row in conn.execute(query)]
        return [u for u in rows if canonical_name(getattr(u, attribute) or "") == wanted]

    def count_users(self) -> int:
        with connect(self._engine) as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    # ------------------------------------------------------------------ departments

    def ensure_department(self, path: str, *, source: str = LOCAL_SOURCE) -> Department:
        path = normalise_department_path(path)
        now = self._clock.now()
        with begin(self._engine) as conn:
            parent_id: int | None = None
            for partial in parent_paths(path):
                parent_id = self._ensure_one(conn, partial, parent_id, source, now)
        department = self.get_department(path)
        assert department is not None
        return department

    def _ensure_one(
        self, conn: Connection, path: str, parent_id: int | None, source: str, now: float
    ) -> int:
        found = conn.execute(select(departments.c.id).where(departments.c.path == path)).scalar()
        if found is not None:
            return int(found)
        try:
            with conn.begin_nested():
                result = conn.execute(
                    insert(departments).values(
                        name=path.rsplit("/", 1)[-1],
                        parent_id=parent_id,
                        path=path,
                        source=source,
                        created_at=now,
                        updated_at=now,
                    )
                )
            return int(result.inserted_primary_key[0])  # type: ignore[index]
        except IntegrityError:
            # Another writer created it between our read and insert.
            return int(
                conn.execute(
                    select(departments.c.id).where(departments.c.path == path)
                ).scalar_one()
            )

    def get_department(self, path: str) -> Department | None:
        path = normalise_department_path(path)
        with connect(self._engine) as conn:
            row = conn.execute(select(departments).where(departments.c.path == path)).first()
        return None if row is None else _to_department(row)

    def list_departments(self) -> list[Department]:
        with connect(self._engine) as conn:
            rows = conn.execute(select(departments).order_by(departments.c.path))
            return [_to_department(row) for row in rows]

    def set_department_manager(self, path: str, user_id: int | None) -> None:
        department = self.ensure_department(path)
        with begin(self._engine) as conn:
            conn.execute(
                update(departments)
                .where(departments.c.id == department.id)
                .values(manager_user_id=user_id, updated_at=self._clock.now())
            )

    # ------------------------------------------------------------------ groups

    @translate_storage_errors
    def user_groups(self, user_id: int) -> list[str]:
        with connect(self._engine) as conn:
            rows = conn.execute(_USER_GROUPS, {"user_id": user_id})
            return [str(r[0]) for r in rows]

    def ensure_group(self, name: str, *, source: str = LOCAL_SOURCE) -> Group:
        name = name.strip()
        if not name:
            raise InvalidInput("a group needs a name")
        now = self._clock.now()
        with begin(self._engine) as conn:
            row = conn.execute(select(groups).where(groups.c.name == name)).first()
            if row is None:
                conn.execute(
                    insert(groups).values(name=name, source=source, created_at=now, updated_at=now)
                )
                row = conn.execute(select(groups).where(groups.c.name == name)).first()
        assert row is not None
        m = row._mapping
        return Group(id=m["id"], name=m["name"], source=m["source"], external_id=m["external_id"])

    def set_group_members(self, group_id: int, user_ids: Sequence[int]) -> None:
        with begin(self._engine) as conn:
            conn.execute(delete(group_members).where(group_members.c.group_id == group_id))
            if user_ids:
                conn.execute(
                    insert(group_members),
                    [{"group_id": group_id, "user_id": uid} for uid in sorted(set(user_ids))],
                )

    def add_group_member(self, group_id: int, user_id: int) -> None:
        with begin(self._engine) as conn:
            exists = conn.execute(
                select(group_members.c.user_id).where(
                    group_members.c.group_id == group_id, group_members.c.user_id == user_id
                )
            ).first()
            if exists is None:
                conn.execute(insert(group_members).values(group_id=group_id, user_id=user_id))

    def _one(self, query: Any) -> User | None:
        with connect(self._engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else _to_user(row)

"""The users and groups a SCIM source owns, in the same `users` / `groups` tables every source
writes (`source = "scim:<name>"`, `external_id` = the SCIM id). The document the source sent
lives in `attributes["scim"]` (users) and `groups.attributes` (groups); the identity columns
sign-in, tokens and policies read are kept in step with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._links import record_row_on_links
from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import (
    departments,
    group_members,
    groups,
    identity_conflicts,
    user_links,
    users,
)
from idhub.adapters.identity_store import SqlIdentityStore
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.directory.linking import build_index, canonical_keys, mobile_spellings
from idhub.core.identifiers import canonical_name
from idhub.core.identity import new_subject
from idhub.core.scim.errors import uniqueness
from idhub.core.scim.ports import LinkView, ScimRecord, UserColumns

_DELETED = "scim_deleted"


def _user_record(row: Any) -> ScimRecord:
    """The SCIM user as its source sent it: on the users row for the source that created the
    person, on the source's link for a source linked to someone another source made."""
    if row.source == row.link_source:
        held = dict(row.attributes or {})
    else:
        held = dict(row.attrs or {})
    return ScimRecord(
        scim_id=row.external_id,
        doc=dict(held.get("scim") or {}),
        created=row.created_at,
        updated=row.updated_at,
        internal_id=row.id,
        deleted=bool(held.get(_DELETED)),
    )


# Indexed look-ups only (ix_users_*; a scan per request would make provisioning slower as
# the directory grows), built once so a request does not pay for compiling it.
_CANDIDATES = select(users.c.id, users.c.email, users.c.phone, users.c.employee_id).where(
    or_(
        users.c.employee_id == bindparam("number"),
        func.lower(users.c.email) == bindparam("email"),
        users.c.phone.in_(bindparam("phones", expanding=True)),
    )
)


# The id reserved for a person an earlier POST could not place, and the link an admin made.
_RESERVED = (
    select(identity_conflicts.c.external_id, user_links.c.user_id)
    .select_from(
        identity_conflicts.outerjoin(
            user_links,
            (user_links.c.source == identity_conflicts.c.source)
            & (user_links.c.external_id == identity_conflicts.c.external_id),
        )
    )
    .where(
        identity_conflicts.c.source == bindparam("source"),
        identity_conflicts.c.username == bindparam("username"),
    )
    .order_by(identity_conflicts.c.id.desc())
    .limit(1)
)


def _said(columns: UserColumns) -> dict[str, Any]:
    """What a source says of a person, as its link records it (core/directory/link_plan.py)."""
    return {
        "display_name": columns.display_name,
        "email": columns.email,
        "phone": columns.phone,
        "employee_id": columns.employee_id,
        "department": columns.department,
        "dn": None,
    }


@storage_boundary
class SqlScimStore:
    def __init__(self, engine: Engine, clock: Clock, identity: SqlIdentityStore) -> None:
        self._engine = engine
        self._clock = clock
        self._identity = identity

    # ------------------------------------------------------------ users

    _USER = select(
        users.c.id,
        user_links.c.external_id,
        users.c.attributes,
        users.c.created_at,
        users.c.updated_at,
        users.c.source,
        user_links.c.source.label("link_source"),
        user_links.c.attrs,
    ).select_from(user_links.join(users, users.c.id == user_links.c.user_id))

    def list_users(self, source: str) -> list[ScimRecord]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                self._USER.where(user_links.c.source == source).order_by(users.c.id)
            )
            return [r for r in map(_user_record, rows) if r.doc]

    def get_user(self, source: str, scim_id: str) -> ScimRecord | None:
        """None also for a link an admin made that the source has not sent a document for."""
        with connect(self._engine) as conn:
            row = conn.execute(
                self._USER.where(user_links.c.source == source, user_links.c.external_id == scim_id)
            ).first()
        record = None if row is None else _user_record(row)
        return record if record is not None and record.doc else None

    def reserved_id(self, source: str, username: str) -> tuple[str, bool] | None:
        """The SCIM id idhub reserved for this source's person `username` when it could not
        tell who they are (identity_conflicts), and whether an admin has linked it since."""
        with connect(self._engine) as conn:
            row = conn.execute(_RESERVED, {"source": source, "username": username}).first()
        if row is None:
            return None
        return row.external_id, row.user_id is not None

    # ------------------------------------------------------------ one identity per person

    def link_view(self, source: str, scim_id: str) -> LinkView | None:
        """The person behind (source, scim_id) when other sources describe them too (or this
        source is not the one that made them); None for a person only this source made."""
        with connect(self._engine) as conn:
            me = conn.execute(
                select(user_links.c.user_id, user_links.c.attrs, users.c.source)
                .select_from(user_links.join(users, users.c.id == user_links.c.user_id))
                .where(user_links.c.source == source, user_links.c.external_id == scim_id)
            ).first()
            if me is None:
                return None
            others = conn.execute(
                select(user_links.c.source, user_links.c.attrs).where(
                    user_links.c.user_id == me.user_id, user_links.c.source != source
                )
            ).all()
            if not others and me.source == source and me.attrs is None:
                return None
            return self._view(conn, me.user_id, me.source, others)

    def _view(self, conn: Any, user_id: int, creator: str, others: Any) -> LinkView:
        row = conn.execute(
            select(
                users.c.username,
                users.c.display_name,
                users.c.email,
                users.c.phone,
                users.c.employee_id,
                departments.c.path,
                users.c.disabled_reason,
            )
            .select_from(users.outerjoin(departments, departments.c.id == users.c.department_id))
            .where(users.c.id == user_id)
        ).one()
        values = {
            "display_name": row.display_name,
            "email": row.email,
            "phone": row.phone,
            "employee_id": row.employee_id,
            "department": row.path,
            "dn": None,
        }
        return LinkView(
            user_id=user_id,
            creator=creator,
            username=row.username,
            disabled_reason=row.disabled_reason,
            row=values,
            others=tuple((src, attrs) for src, attrs in others),
        )

    def person_view(self, user_id: int) -> LinkView | None:
        with connect(self._engine) as conn:
            creator = conn.execute(select(users.c.source).where(users.c.id == user_id)).scalar()
            if creator is None:
                return None
            others = conn.execute(
                select(user_links.c.source, user_links.c.attrs).where(
                    user_links.c.user_id == user_id
                )
            ).all()
            return self._view(conn, user_id, creator, others)

    def link_candidates(self, keys: Mapping[str, str], *, country_code: str) -> dict[str, Any]:
        """key -> canonical value -> the idhub users holding it (core/directory/linking.py),
        for one person's keys: a few indexed lookups, the mobile one narrowed by its last
        digits and compared canonically here."""
        found: dict[int, tuple[str | None, str | None, str | None]] = {}
        if not keys:
            return {}
        # A key the person lacks is asked as NULL, which equals nothing.
        mobile = keys.get("mobile")
        params = {
            "number": keys.get("employee_number"),
            "email": keys.get("email"),
            "phones": mobile_spellings(mobile, country_code) if mobile else [""],
        }
        with connect(self._engine) as conn:
            for uid, email, phone, number in conn.execute(_CANDIDATES, params):
                found[uid] = (email, phone, number)
            linked: dict[int, set[str]] = {}
            if found:
                for uid, src in conn.execute(
                    select(user_links.c.user_id, user_links.c.source).where(
                        user_links.c.user_id.in_(list(found))
                    )
                ):
                    linked.setdefault(uid, set()).add(src)
        people = [
            (
                uid,
                canonical_keys(email=e, phone=p, employee_id=n, country_code=country_code),
                frozenset(linked.get(uid, ())),
            )
            for uid, (e, p, n) in found.items()
        ]
        return build_index(people)

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
    ) -> None:
        now = self._clock.now()
        view = self.person_view(user_id)
        assert view is not None
        with begin(self._engine, savepoint=True) as conn:
            record_row_on_links(conn, user_id, view.row, creator=view.creator, now=now)
            conn.execute(
                insert(user_links).values(
                    user_id=user_id,
                    source=source,
                    external_id=scim_id,
                    linked_at=now,
                    linked_by=source,
                    key=key,
                    value_hash=value_hash,
                    attrs={**_said(columns), "scim": doc},
                )
            )
            conn.execute(
                update(identity_conflicts)
                .where(
                    identity_conflicts.c.source == source,
                    identity_conflicts.c.external_id == scim_id,
                    identity_conflicts.c.resolved_at.is_(None),
                )
                .values(resolved_at=now, resolved_by=source)
            )

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
    ) -> None:
        """A linked person: this source's word goes on its link, the row takes `columns`
        (what precedence made of every linked source's word)."""
        now = self._clock.now()
        values = self._columns(source, columns)
        held: dict[str, Any] = {**_said(said), "scim": doc}
        if deleted:
            held[_DELETED] = True
        with begin(self._engine, savepoint=True) as conn:
            row = conn.execute(
                select(users.c.disabled, users.c.source, users.c.attributes).where(
                    users.c.id == user_id
                )
            ).first()
            if row is not None and bool(row.disabled) != values["disabled"]:
                values["disabled_at"] = now if values["disabled"] else None
            if row is not None and row.source == source:
                # The creating source's document stays where it always was (the row's
                # attributes, whose other keys belong to others and are kept).
                kept = {k: v for k, v in dict(row.attributes or {}).items() if k != _DELETED}
                values["attributes"] = {
                    **kept,
                    "scim": doc,
                    **({_DELETED: True} if deleted else {}),
                }
            conn.execute(
                update(users).where(users.c.id == user_id).values(**values, updated_at=now)
            )
            conn.execute(
                update(user_links)
                .where(user_links.c.source == source, user_links.c.external_id == scim_id)
                .values(attrs=held)
            )

    def linked_by_username(self, source: str, username: str) -> list[str]:
        # Only links that hold their own document (attrs set): few, next to the source's own.
        wanted = canonical_name(username)
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(user_links.c.external_id, user_links.c.attrs).where(
                    user_links.c.source == source, user_links.c.attrs.is_not(None)
                )
            ).all()
        return [
            ext
            for ext, attrs in rows
            if canonical_name(str(((attrs or {}).get("scim") or {}).get("userName", ""))) == wanted
        ]

    def drop_link(self, source: str, scim_id: str) -> None:
        """This source no longer describes the person (and may not disable them): its link
        goes, and with it the person's place in this source's groups."""
        with begin(self._engine, savepoint=True) as conn:
            person = select(user_links.c.user_id).where(
                user_links.c.source == source, user_links.c.external_id == scim_id
            )
            owned = select(groups.c.id).where(groups.c.source == source)
            conn.execute(
                delete(group_members).where(
                    group_members.c.group_id.in_(owned), group_members.c.user_id.in_(person)
                )
            )
            conn.execute(
                delete(user_links).where(
                    user_links.c.source == source, user_links.c.external_id == scim_id
                )
            )

    def record_conflict(self, found: Mapping[str, Any]) -> None:
        now = self._clock.now()
        with begin(self._engine) as conn:
            where = (
                identity_conflicts.c.source == found["source"],
                identity_conflicts.c.external_id == found["external_id"],
                identity_conflicts.c.resolved_at.is_(None),
            )
            values = {
                "username": found.get("username"),
                "key": found.get("key") or "",
                "reason": str(found.get("reason", ""))[:300],
                "candidates": list(found.get("candidates", ())),
                "last_seen": now,
            }
            if not conn.execute(update(identity_conflicts).where(*where).values(values)).rowcount:
                conn.execute(
                    insert(identity_conflicts).values(
                        source=found["source"],
                        external_id=found["external_id"],
                        first_seen=now,
                        **values,
                    )
                )

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
                key = result.inserted_primary_key
                assert key is not None
                conn.execute(
                    insert(user_links).values(
                        user_id=int(key[0]),
                        source=source,
                        external_id=scim_id,
                        linked_at=now,
                        linked_by="created",
                    )
                )
        except IntegrityError as exc:
            raise uniqueness(f"userName {columns.username[:100]!r} is already taken") from exc
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
                select(group_members.c.group_id, user_links.c.external_id)
                .join(user_links, user_links.c.user_id == group_members.c.user_id)
                .where(group_members.c.group_id.in_(list(members)), user_links.c.source == source)
                .order_by(user_links.c.user_id)
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
                    select(user_links.c.user_id).where(
                        user_links.c.source == source,
                        user_links.c.external_id.in_(list(members)),
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

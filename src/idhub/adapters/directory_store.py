"""Batched writes for directory sync: users, departments, groups, memberships, run records
and the per-source lease.

Sync writes tens of thousands of rows, so it does not go through the one-row-at-a-time
identity store: each batch is one transaction of executemany statements. Subjects are made
the same way as everywhere else (`new_subject`). Every write is keyed by (source, external
id), so replaying a batch after a crash cannot create a duplicate.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from idhub.adapters._storage_errors import (
    storage_boundary,
    storage_error_with_detail,
)
from idhub.adapters.db import (
    change_counters,
    departments,
    group_members,
    groups,
    identity_conflicts,
    user_links,
    users,
)
from idhub.adapters.sync_ledger import SqlSyncLedger, lease_owner
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.directory.dn import dn_key
from idhub.core.directory.mapping import SourceGroup
from idhub.core.directory.plan import StoredUser, UserChange, plan_memberships
from idhub.core.directory.ports import PendingGroupChange
from idhub.core.identity import LOCAL_SOURCE, new_subject, parent_paths

__all__ = ["SqlDirectoryStore", "lease_owner"]

CHUNK = 500  # values per IN (...) list; well under every backend's parameter limit
COUNTER = "directory"


def _chunks(values: Collection[Any]) -> Iterator[list[Any]]:
    items = list(values)
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


@storage_boundary
class SqlDirectoryStore(SqlSyncLedger):
    """The `SyncStore` port: the ledger (lease, runs, state) plus the directory writes."""

    # ------------------------------------------------------------ users

    def stored_users(
        self, source: str, external_ids: Collection[str] | None = None
    ) -> dict[str, StoredUser]:
        """The people this source is linked to, keyed by its external id (user_links)."""
        query = (
            select(
                users.c.id,
                users.c.sub,
                user_links.c.external_id,
                users.c.username,
                users.c.display_name,
                users.c.email,
                users.c.phone,
                users.c.employee_id,
                departments.c.path,
                users.c.dn,
                users.c.disabled,
                users.c.disabled_reason,
                users.c.source,
                user_links.c.attrs,
                users.c.attributes,
            )
            .select_from(
                user_links.join(users, users.c.id == user_links.c.user_id).outerjoin(
                    departments, users.c.department_id == departments.c.id
                )
            )
            .where(user_links.c.source == source)
        )
        me = user_links.alias("me")
        other = user_links.alias("other")
        others_query = (
            select(me.c.external_id, other.c.source, other.c.attrs)
            .select_from(other.join(me, me.c.user_id == other.c.user_id))
            .where(me.c.source == source, other.c.source != source)
        )
        out: dict[str, StoredUser] = {}
        others: dict[str, list[tuple[str, Any]]] = {}
        with connect(self._engine) as conn:
            if external_ids is None:
                rows: Any = conn.execute(query)
                self._collect(rows, out)
                for ext, src, attrs in conn.execute(others_query):
                    others.setdefault(ext, []).append((src, attrs))
            else:
                for chunk in _chunks(external_ids):
                    self._collect(
                        conn.execute(query.where(user_links.c.external_id.in_(chunk))), out
                    )
                    for ext, src, attrs in conn.execute(
                        others_query.where(me.c.external_id.in_(chunk))
                    ):
                        others.setdefault(ext, []).append((src, attrs))
        for ext, links in others.items():
            if ext in out:
                out[ext] = replace(out[ext], others=tuple(sorted(links, key=lambda x: x[0])))
        return out

    @staticmethod
    def _collect(rows: Any, out: dict[str, StoredUser]) -> None:
        for r in rows:
            out[r[2]] = StoredUser(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]), r[11],
                creator=r[12], own=r[13], attributes=dict(r[14] or {}),
            )  # fmt: skip

    def stored_people(self, user_ids: Collection[int]) -> dict[int, StoredUser]:
        query = select(
            users.c.id,
            users.c.sub,
            users.c.external_id,
            users.c.username,
            users.c.display_name,
            users.c.email,
            users.c.phone,
            users.c.employee_id,
            departments.c.path,
            users.c.dn,
            users.c.disabled,
            users.c.disabled_reason,
            users.c.source,
            users.c.attributes,
        ).select_from(users.outerjoin(departments, users.c.department_id == departments.c.id))
        out: dict[int, StoredUser] = {}
        with connect(self._engine) as conn:
            for chunk in _chunks(user_ids):
                links: dict[int, list[tuple[str, Any]]] = {}
                for uid, src, attrs in conn.execute(
                    select(user_links.c.user_id, user_links.c.source, user_links.c.attrs).where(
                        user_links.c.user_id.in_(chunk)
                    )
                ):
                    links.setdefault(uid, []).append((src, attrs))
                for r in conn.execute(query.where(users.c.id.in_(chunk))):
                    out[r[0]] = StoredUser(
                        r[0],
                        r[1],
                        r[2] or "",
                        r[3],
                        r[4],
                        r[5],
                        r[6],
                        r[7],
                        r[8],
                        r[9],
                        bool(r[10]),
                        r[11],
                        creator=r[12],
                        own=None,
                        others=tuple(sorted(links.get(r[0], []), key=lambda x: x[0])),
                        attributes=dict(r[13] or {}),
                    )
        return out

    def link_people(
        self,
    ) -> Iterator[tuple[int, str | None, str | None, str | None, frozenset[str]]]:
        with connect(self._engine) as conn:
            linked: dict[int, set[str]] = {}
            for uid, src in conn.execute(select(user_links.c.user_id, user_links.c.source)):
                linked.setdefault(uid, set()).add(src)
            rows = conn.execute(
                select(users.c.id, users.c.email, users.c.phone, users.c.employee_id).where(
                    or_(
                        users.c.email.is_not(None),
                        users.c.phone.is_not(None),
                        users.c.employee_id.is_not(None),
                    )
                )
            ).all()
        for uid, email, phone, number in rows:
            yield uid, email, phone, number, frozenset(linked.get(uid, ()))

    def record_conflicts(self, conflicts: Sequence[Mapping[str, Any]]) -> None:
        """Opens a conflict per person, or refreshes the open one (last seen, candidates)."""
        now = self._clock.now()
        with begin(self._engine) as conn:
            for found in conflicts:
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
                if not conn.execute(
                    update(identity_conflicts).where(*where).values(values)
                ).rowcount:
                    conn.execute(
                        insert(identity_conflicts).values(
                            source=found["source"],
                            external_id=found["external_id"],
                            first_seen=now,
                            **values,
                        )
                    )

    def enabled_ids(self, source: str) -> set[str]:
        with connect(self._engine) as conn:
            return set(
                conn.execute(
                    select(user_links.c.external_id)
                    .select_from(user_links.join(users, users.c.id == user_links.c.user_id))
                    .where(user_links.c.source == source, users.c.disabled.is_(False))
                ).scalars()
            )

    def usernames_taken(self, usernames: Collection[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with connect(self._engine) as conn:
            for chunk in _chunks(usernames):
                for name, src, ext in conn.execute(
                    select(users.c.username, users.c.source, users.c.external_id).where(
                        users.c.username.in_(chunk)
                    )
                ):
                    out[name] = f"{src}|{ext or ''}"
        return out

    def apply_users(
        self, changes: Sequence[UserChange], *, source: str, department_ids: Mapping[str, int]
    ) -> None:
        now = self._clock.now()
        creates: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        gone: list[dict[str, Any]] = []
        new_links: list[dict[str, Any]] = []
        unlinks: list[dict[str, Any]] = []
        link_attrs: list[dict[str, Any]] = []
        fills: list[dict[str, Any]] = []
        for change in changes:
            entry = change.entry
            if change.kind == "unlink":
                unlinks.append({"_ext": change.external_id})
                continue
            disabled = change.disabled_reason is not None
            state = {
                "disabled": disabled,
                "disabled_reason": change.disabled_reason,
                "disabled_at": now if disabled else None,
            }
            if entry is None:
                gone.append({"_id": change.user_id, **{f"v_{k}": v for k, v in state.items()}})
                continue
            if change.kind == "link":
                new_links.append(
                    {
                        "user_id": change.user_id,
                        "source": source,
                        "external_id": change.external_id,
                        "linked_at": now,
                        "linked_by": f"sync:{source}",
                        "key": change.link_key,
                        "value_hash": change.link_hash,
                        "attrs": dict(change.link_attrs or {}),
                    }
                )
                if change.fill_attrs is not None:
                    fills.append({"user_id": change.user_id, **change.fill_attrs})
            elif change.link_attrs is not None:
                link_attrs.append({"_ext": change.external_id, "_attrs": dict(change.link_attrs)})
            said: Any = change.values if change.values is not None else None
            if said is None:
                said = {
                    "username": entry.username,
                    "display_name": entry.display_name,
                    "email": entry.email,
                    "phone": entry.phone,
                    "employee_id": entry.employee_id,
                    "department": entry.department,
                    "dn": entry.dn,
                }
            department = said.get("department")
            fields: dict[str, Any] = {
                "username": said["username"],
                "display_name": said["display_name"] or "",
                "email": said["email"],
                "phone": said["phone"],
                "employee_id": said["employee_id"],
                "department_id": department_ids.get(department) if department else None,
                "dn": said["dn"],
                "updated_at": now,
                **state,
            }
            if change.kind == "create":
                creates.append(
                    {
                        **fields,
                        "sub": new_subject(),
                        "source": source,
                        "external_id": entry.external_id,
                        "password_hash": None,
                        "failed_logins": 0,
                        "attributes": dict(entry.attributes),
                        "created_at": now,
                    }
                )
            else:
                if (
                    change.kind not in ("disable", "enable")
                    and "disabled_reason" not in change.fields
                ):
                    # Keep the disabled time of users this change does not enable or disable.
                    fields.pop("disabled_at")
                if change.attributes is not None:
                    fields["attributes"] = dict(change.attributes)
                if change.fields or change.attributes is not None:
                    updates.append({"_id": change.user_id, **fields})
        try:
            with begin(self._engine) as conn:
                if creates:
                    conn.execute(insert(users), creates)
                    # The creating link of each new user, read back by (source, external id).
                    for chunk in _chunks([row["external_id"] for row in creates]):
                        conn.execute(
                            insert(user_links).from_select(
                                ["user_id", "source", "external_id", "linked_at", "linked_by"],
                                select(
                                    users.c.id,
                                    users.c.source,
                                    users.c.external_id,
                                    literal(now),
                                    literal("created"),
                                ).where(users.c.source == source, users.c.external_id.in_(chunk)),
                            )
                        )
                if updates:
                    self._executemany_update(conn, updates)
                if gone:
                    conn.execute(
                        update(users)
                        .where(users.c.id == bindparam("_id"))
                        .values(
                            disabled=bindparam("v_disabled"),
                            disabled_reason=bindparam("v_disabled_reason"),
                            disabled_at=bindparam("v_disabled_at"),
                            updated_at=now,
                        ),
                        gone,
                    )
                self._write_links(conn, source, new_links, unlinks, link_attrs, fills, now)
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(exc, "directory sync could not write users") from exc

    @staticmethod
    def _write_links(
        conn: Any,
        source: str,
        new_links: list[dict[str, Any]],
        unlinks: list[dict[str, Any]],
        link_attrs: list[dict[str, Any]],
        fills: list[dict[str, Any]],
        now: float,
    ) -> None:
        # First a person's existing links record the row (as adapters/_links.py does for one
        # person, here in two statements per batch), then the new links go in.
        if fills:
            conn.execute(
                update(user_links)
                .where(user_links.c.user_id == bindparam("_uid"), user_links.c.attrs.is_(None))
                .values(attrs=bindparam("_attrs")),
                [{"_uid": f["user_id"], "_attrs": dict(f["row"])} for f in fills],
            )
            local = [f for f in fills if f["creator"] == LOCAL_SOURCE and not f.get("has_local")]
            if local:
                conn.execute(
                    insert(user_links),
                    [
                        {
                            "user_id": f["user_id"],
                            "source": LOCAL_SOURCE,
                            "external_id": str(f["user_id"]),
                            "linked_at": now,
                            "linked_by": "created",
                            "attrs": dict(f["row"]),
                        }
                        for f in local
                    ],
                )
        if new_links:
            conn.execute(insert(user_links), new_links)
            # A person linked by the sync is no longer a conflict.
            conn.execute(
                update(identity_conflicts)
                .where(
                    identity_conflicts.c.source == source,
                    identity_conflicts.c.external_id == bindparam("_ext"),
                    identity_conflicts.c.resolved_at.is_(None),
                )
                .values(resolved_at=now, resolved_by=f"sync:{source}"),
                [{"_ext": row["external_id"]} for row in new_links],
            )
        if link_attrs:
            conn.execute(
                update(user_links)
                .where(user_links.c.source == source, user_links.c.external_id == bindparam("_ext"))
                .values(attrs=bindparam("_attrs")),
                link_attrs,
            )
        if unlinks:
            conn.execute(
                delete(user_links).where(
                    user_links.c.source == source, user_links.c.external_id == bindparam("_ext")
                ),
                unlinks,
            )

    @staticmethod
    def _executemany_update(conn: Any, rows: list[dict[str, Any]]) -> None:
        # executemany needs one statement shape: group rows by the columns they set.
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            shapes.setdefault(tuple(sorted(k for k in row if k != "_id")), []).append(row)
        for keys, batch in shapes.items():
            # Bind names must differ from column names in an UPDATE's SET clause.
            statement = (
                update(users)
                .where(users.c.id == bindparam("_id"))
                .values(**{k: bindparam(f"v_{k}") for k in keys})
            )
            conn.execute(
                statement, [{"_id": r["_id"], **{f"v_{k}": r[k] for k in keys}} for r in batch]
            )

    def user_ids_by_dn(self, source: str) -> dict[str, int]:
        """This source's DN of each person linked to it: the one its link recorded, else
        (the creating source) the users row's."""
        out: dict[str, int] = {}
        with connect(self._engine) as conn:
            for uid, dn, attrs in conn.execute(
                select(users.c.id, users.c.dn, user_links.c.attrs)
                .select_from(user_links.join(users, users.c.id == user_links.c.user_id))
                .where(user_links.c.source == source)
            ):
                mine = attrs.get("dn") if attrs else dn
                if mine:
                    out[dn_key(mine)] = uid
        return out

    # ------------------------------------------------------------ departments

    def missing_departments(self, paths: Collection[str]) -> set[str]:
        return set(paths) - self._existing_paths(paths)

    def local_departments(self, paths: Collection[str]) -> set[str]:
        """The paths among `paths` of departments an admin made in idhub (source "local")."""
        return self._existing_paths(paths, departments.c.source == LOCAL_SOURCE)

    def _existing_paths(self, paths: Collection[str], *where: Any) -> set[str]:
        found: set[str] = set()
        with connect(self._engine) as conn:
            for chunk in _chunks(paths):
                query = select(departments.c.path).where(departments.c.path.in_(chunk), *where)
                found.update(conn.execute(query).scalars())
        return found

    def ensure_departments(self, paths: Collection[str], *, source: str) -> dict[str, int]:
        """path -> id for every path given (and its ancestors), creating the missing ones."""
        wanted = {p for path in paths for p in parent_paths(path)}
        ids: dict[str, int] = {}
        now = self._clock.now()
        try:
            with begin(self._engine) as conn:
                for chunk in _chunks(wanted):
                    for path, dept_id in conn.execute(
                        select(departments.c.path, departments.c.id).where(
                            departments.c.path.in_(chunk)
                        )
                    ):
                        ids[path] = dept_id
                # One executemany per depth (parents first), then read the new ids back:
                # a row-at-a-time INSERT ... RETURNING cost a round trip per department.
                missing = sorted(wanted - set(ids), key=lambda p: (p.count("/"), p))
                for depth in sorted({p.count("/") for p in missing}):
                    level = [p for p in missing if p.count("/") == depth]
                    conn.execute(
                        insert(departments),
                        [
                            {
                                "name": path.rsplit("/", 1)[1],
                                "parent_id": ids.get(path.rsplit("/", 1)[0]),
                                "path": path,
                                "source": source,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for path in level
                        ],
                    )
                    for chunk in _chunks(level):
                        for path, dept_id in conn.execute(
                            select(departments.c.path, departments.c.id).where(
                                departments.c.path.in_(chunk)
                            )
                        ):
                            ids[path] = dept_id
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(
                exc, "directory sync could not create departments"
            ) from exc
        return ids

    def set_managers(self, managers: Mapping[str, int | None]) -> dict[str, tuple[Any, Any]]:
        return self._set_department_column("manager_user_id", managers)

    def set_department_orders(self, orders: Mapping[str, int]) -> dict[str, tuple[Any, Any]]:
        """Stores each department's order among its siblings; returns the ones that moved."""
        return self._set_department_column("sort_order", orders)

    def _set_department_column(
        self, column: str, wanted: Mapping[str, Any]
    ) -> dict[str, tuple[Any, Any]]:
        """Sets `column` of each department (by path) to its wanted value; returns the paths
        that changed as (before, after)."""
        changed: dict[str, tuple[Any, Any]] = {}
        now = self._clock.now()
        with begin(self._engine) as conn:
            for chunk in _chunks(wanted):
                for path, current in conn.execute(
                    select(departments.c.path, departments.c[column]).where(
                        departments.c.path.in_(chunk)
                    )
                ):
                    if current != wanted[path]:
                        changed[path] = (current, wanted[path])
            if changed:
                conn.execute(
                    update(departments)
                    .where(departments.c.path == bindparam("_path"))
                    .values({column: bindparam("_value"), "updated_at": now}),
                    [{"_path": p, "_value": after} for p, (_, after) in changed.items()],
                )
        return changed

    # ------------------------------------------------------------ groups

    def sync_groups(
        self, source: str, listing: Sequence[SourceGroup], members: Mapping[str, set[int]]
    ) -> tuple[dict[str, Any], list[str], list[PendingGroupChange]]:
        now = self._clock.now()
        warnings: list[str] = []
        changes: list[PendingGroupChange] = []
        with begin(self._engine) as conn:
            existing = {
                r.external_id: r
                for r in conn.execute(
                    select(groups.c.id, groups.c.name, groups.c.external_id, groups.c.dn).where(
                        groups.c.source == source
                    )
                )
            }
            names = {g.name for g in listing}
            others: set[str] = set()
            for chunk in _chunks(names):
                others.update(
                    conn.execute(
                        select(groups.c.name).where(
                            groups.c.name.in_(chunk), groups.c.source != source
                        )
                    ).scalars()
                )
            ids: dict[str, int] = {}
            created: set[int] = set()
            fresh: list[dict[str, Any]] = []
            renamed: list[dict[str, Any]] = []
            for group in listing:
                if group.name in others:
                    warnings.append(f"group {group.name!r} exists from another source; skipped")
                    continue
                row = existing.get(group.external_id)
                if row is None:
                    fresh.append(
                        {
                            "name": group.name,
                            "source": source,
                            "external_id": group.external_id,
                            "dn": group.dn,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    continue
                if row.name != group.name or row.dn != group.dn:
                    renamed.append({"_id": row.id, "v_name": group.name, "v_dn": group.dn})
                ids[group.external_id] = row.id
            if renamed:
                conn.execute(
                    update(groups)
                    .where(groups.c.id == bindparam("_id"))
                    .values(name=bindparam("v_name"), dn=bindparam("v_dn"), updated_at=now),
                    renamed,
                )
            if fresh:
                conn.execute(insert(groups), fresh)
                for chunk in _chunks([row["external_id"] for row in fresh]):
                    for gid, ext in conn.execute(
                        select(groups.c.id, groups.c.external_id).where(
                            groups.c.source == source, groups.c.external_id.in_(chunk)
                        )
                    ):
                        ids[ext] = gid
                        created.add(gid)
            vanished = [r for ext, r in existing.items() if ext not in ids]
            current: dict[int, set[int]] = {}
            for gid, uid in conn.execute(
                select(group_members.c.group_id, group_members.c.user_id)
                .select_from(group_members.join(groups, groups.c.id == group_members.c.group_id))
                .where(groups.c.source == source)
            ):
                current.setdefault(gid, set()).add(uid)
            desired = {ids[ext]: members.get(ext, set()) for ext in ids}
            adds, removes = plan_memberships(
                desired, {g: u for g, u in current.items() if g in desired}
            )
            # In slices: 250,000 parameter dicts at once were the peak of a first load.
            for start in range(0, len(adds), 5 * CHUNK):
                conn.execute(
                    insert(group_members),
                    [{"group_id": g, "user_id": u} for g, u in adds[start : start + 5 * CHUNK]],
                )
            for start in range(0, len(removes), 5 * CHUNK):
                conn.execute(
                    delete(group_members).where(
                        and_(
                            group_members.c.group_id == bindparam("g"),
                            group_members.c.user_id == bindparam("u"),
                        )
                    ),
                    [{"g": g, "u": u} for g, u in removes[start : start + 5 * CHUNK]],
                )
            for row in vanished:
                conn.execute(delete(group_members).where(group_members.c.group_id == row.id))
                conn.execute(delete(groups).where(groups.c.id == row.id))
        name_of = {gid: g.name for g in listing if (gid := ids.get(g.external_id)) is not None}
        added: dict[int, list[int]] = {}
        removed: dict[int, list[int]] = {}
        for g, u in adds:
            added.setdefault(g, []).append(u)
        for g, u in removes:
            removed.setdefault(g, []).append(u)
        for gid in sorted(set(added) | set(removed) | created):
            changes.append(
                PendingGroupChange(
                    group=name_of[gid],
                    added=tuple(added.get(gid, ())),
                    removed=tuple(removed.get(gid, ())),
                    created=gid in created,
                )
            )
        for row in vanished:
            changes.append(
                PendingGroupChange(
                    group=row.name,
                    added=(),
                    removed=tuple(sorted(current.get(row.id, ()))),
                    deleted=True,
                )
            )
        counts = {
            "groups_created": len(created),
            "groups_deleted": len(vanished),
            "memberships_added": len(adds),
            "memberships_removed": len(removes),
        }
        return counts, warnings, changes

    def bump_directory_counter(self) -> None:
        with begin(self._engine) as conn:
            bumped = conn.execute(
                update(change_counters)
                .where(change_counters.c.name == COUNTER)
                .values(value=change_counters.c.value + 1)
            ).rowcount
            if not bumped:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(change_counters).values(name=COUNTER, value=1))
                except IntegrityError:
                    conn.execute(
                        update(change_counters)
                        .where(change_counters.c.name == COUNTER)
                        .values(value=change_counters.c.value + 1)
                    )

    def directory_counter(self) -> int:
        with connect(self._engine) as conn:
            value = conn.execute(
                select(change_counters.c.value).where(change_counters.c.name == COUNTER)
            ).scalar()
        return int(value or 0)

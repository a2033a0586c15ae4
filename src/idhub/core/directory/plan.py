"""Planning a directory sync: what must change in idhub so it mirrors the source.

Everything here is pure: the source entries and the stored state come in, a `SyncPlan`
comes out. Applying it (`core/directory/sync.py`) is a separate step, so a dry run shows
exactly what a real run would do, and the safety brake can refuse a plan before any row moves.

A user is matched by the source's stable id (entryUUID / objectGUID), never by DN or
username, so renames and moves keep the same idhub user and `sub`. Users are never deleted:
one gone from the source, or disabled there, is disabled here; one that comes back is enabled
again, unless an admin disabled it in idhub (then the sync leaves it alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from idhub.core.directory.dn import dn_key, normalise_dn
from idhub.core.directory.mapping import SourceGroup, SourceUser

ChangeKind = Literal["create", "update", "move", "disable", "enable", "link", "unlink"]
KINDS: tuple[ChangeKind, ...] = ("create", "update", "move", "disable", "enable", "link", "unlink")
# Why the sync disabled someone; only users disabled for one of these are re-enabled by it.
DISABLED_IN_SOURCE = "directory:disabled"
GONE_FROM_SOURCE = "directory:gone"
SYNC_REASONS = (DISABLED_IN_SOURCE, GONE_FROM_SOURCE)

# Fields a source owns, in the order a diff shows them.
SYNCED_FIELDS = ("username", "display_name", "email", "phone", "employee_id", "department", "dn")
_NO_FIELDS: Mapping[str, tuple[Any, Any]] = {}


@dataclass(frozen=True, slots=True)
class StoredUser:
    """The part of an idhub user the sync compares."""

    id: int
    sub: str
    external_id: str
    username: str
    display_name: str
    email: str | None
    phone: str | None
    employee_id: str | None
    department: str | None
    dn: str | None
    disabled: bool
    disabled_reason: str | None
    # One identity per person (core/directory/linking.py): the source that created the user
    # (users.source), what this source's link last recorded (None: the row's values), and
    # the person's other links as (source, recorded values or None).
    creator: str = ""
    own: Mapping[str, Any] | None = None
    others: tuple[tuple[str, Mapping[str, Any] | None], ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserChange:
    kind: ChangeKind
    external_id: str
    username: str
    # field -> (before, after); `disabled` included when it flips.
    fields: Mapping[str, tuple[Any, Any]]
    user_id: int | None = None  # None for creates
    entry: SourceUser | None = None  # None for users gone from the source
    disabled_reason: str | None = None
    # Linked people (core/directory/link_plan.py): the column values to write (None: the
    # entry's, as for a person one source describes), this source's link record to write,
    # the new link's key and value hash (kind "link"), and links to fill with the row's values.
    values: Mapping[str, Any] | None = None
    link_attrs: Mapping[str, Any] | None = None
    link_key: str | None = None
    link_hash: str | None = None
    # A new link: {"row": the users row's values, "creator": users.source}, which the
    # person's existing links (and a local account's own word) record first.
    fill_attrs: Mapping[str, Any] | None = None

    def department(self) -> str | None:
        """The department path this change puts the person in."""
        if self.values is not None:
            return self.values.get("department")
        return self.entry.department if self.entry else None

    # The user's whole `attributes` after the change, when a source-owned key changes.
    attributes: Mapping[str, Any] | None = None

    def diff(self) -> Mapping[str, tuple[Any, Any]]:
        """field -> (before, after). A create's is derived from its entry on demand rather
        than stored: a first load plans 100,000 creates and these dicts were most of its memory."""
        if self.kind != "create" or self.entry is None:
            return self.fields
        after = {name: _value(self.entry, name) for name in SYNCED_FIELDS}
        if self.entry.disabled:
            after["disabled"] = True
        return {k: (None, v) for k, v in after.items() if v is not None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "username": self.username,
            "external_id": self.external_id,
            "changes": {k: [b, a] for k, (b, a) in self.diff().items()},
        }


@dataclass
class SyncPlan:
    source: str
    mode: str
    changes: list[UserChange] = field(default_factory=list)
    new_departments: set[str] = field(default_factory=set)
    # path -> manager DN (None to clear); only departments whose manager changes.
    managers: dict[str, str | None] = field(default_factory=dict)
    # path -> order among siblings, from sources that give one (DingTalk, WeCom).
    orders: dict[str, int] = field(default_factory=dict)
    groups: list[SourceGroup] | None = None  # None: groups not looked at this run
    warnings: list[str] = field(default_factory=list)
    entries_seen: int = 0
    complete: bool = True  # False when the source cut the result short
    brake: str | None = None  # why the run must not be applied
    high_water: str | None = None
    # Segregation of duties: violations the changes would add, and the usernames whose
    # change is held back because it adds a `block` one (core/authz/sod_sync.py).
    sod: list[Mapping[str, Any]] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    held_changes: list[UserChange] = field(default_factory=list, repr=False)
    # People matched ambiguously (core/directory/linking.py): neither created nor linked.
    conflicts: list[Mapping[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {kind: 0 for kind in ("create", "update", "move", "disable", "enable")}
        for change in self.changes:
            out[change.kind] = out.get(change.kind, 0) + 1
        if self.conflicts:
            out["conflicts"] = len(self.conflicts)
        out["seen"] = self.entries_seen
        out["departments_created"] = len(self.new_departments)
        out["warnings"] = len(self.warnings)
        if self.sod:
            out["sod_violations"] = len(self.sod)
            out["held_back"] = len(self.held_back)
        return out

    def as_dict(self, *, limit: int | None = None) -> dict[str, Any]:
        changes = self.changes if limit is None else self.changes[:limit]
        return {
            "source": self.source,
            "mode": self.mode,
            "counts": self.counts(),
            "brake": self.brake,
            "complete": self.complete,
            "new_departments": sorted(self.new_departments),
            "managers": dict(sorted(self.managers.items())),
            "warnings": self.warnings,
            "changes": [c.as_dict() for c in changes],
            "changes_omitted": len(self.changes) - len(changes),
            "sod": list(self.sod),
            "held_back": list(self.held_back),
            "conflicts": list(self.conflicts),
        }


def _department(entry: SourceUser) -> str | None:
    return entry.department


def plan_user(stored: StoredUser | None, entry: SourceUser) -> UserChange | None:
    """The change one source entry asks for, or None when idhub already agrees."""
    if stored is None:
        return UserChange(
            kind="create",
            external_id=entry.external_id,
            username=entry.username,
            fields=_NO_FIELDS,  # see UserChange.diff
            entry=entry,
            disabled_reason=DISABLED_IN_SOURCE if entry.disabled else None,
        )
    diff: dict[str, tuple[Any, Any]] = {}
    for name in SYNCED_FIELDS:
        before, after = getattr(stored, name), _value(entry, name)
        if name == "dn":
            # Servers may return a DN with different spacing or case; compare normalised.
            if (
                before is not None
                and after is not None
                and normalise_dn(before) == normalise_dn(after)
            ):
                continue
        if before != after:
            diff[name] = (before, after)
    attributes = _attributes_after(stored, entry, diff)
    kind: ChangeKind | None = None
    reason = stored.disabled_reason
    if entry.disabled and not stored.disabled:
        kind, reason = "disable", DISABLED_IN_SOURCE
        diff["disabled"] = (False, True)
    elif not entry.disabled and stored.disabled and stored.disabled_reason in SYNC_REASONS:
        kind, reason = "enable", None
        diff["disabled"] = (True, False)
    elif entry.disabled and stored.disabled and stored.disabled_reason == GONE_FROM_SOURCE:
        # Came back, but disabled there: keep disabled, for the right reason.
        reason = DISABLED_IN_SOURCE
        diff["disabled_reason"] = (GONE_FROM_SOURCE, DISABLED_IN_SOURCE)
    if not diff:
        return None
    if kind is None:
        kind = "move" if ("department" in diff or "dn" in diff) else "update"
    return UserChange(
        kind=kind,
        external_id=entry.external_id,
        username=entry.username,
        fields=diff,
        user_id=stored.id,
        entry=entry,
        disabled_reason=reason,
        attributes=attributes,
    )


def _attributes_after(
    stored: StoredUser, entry: SourceUser, diff: dict[str, tuple[Any, Any]]
) -> Mapping[str, Any] | None:
    """The stored attributes with the source's keys set, if any of them changes (each change
    noted in `diff` as `attributes.<key>`); None when they all agree."""
    changed = False
    for key, value in entry.attributes:
        before = stored.attributes.get(key)
        if before != value:
            diff[f"attributes.{key}"] = (before, value)
            changed = True
    return {**stored.attributes, **dict(entry.attributes)} if changed else None


def _value(entry: SourceUser, name: str) -> Any:
    if name == "department":
        return _department(entry)
    return getattr(entry, name)


def plan_gone(stored: StoredUser) -> UserChange | None:
    """A user the source no longer has: disabled (never deleted)."""
    if stored.disabled:
        return None
    return UserChange(
        kind="disable",
        external_id=stored.external_id,
        username=stored.username,
        fields={"disabled": (False, True)},
        user_id=stored.id,
        entry=None,
        disabled_reason=GONE_FROM_SOURCE,
    )


def check_username_conflicts(
    changes: list[UserChange],
    taken: Mapping[str, str],
) -> tuple[list[UserChange], list[str]]:
    """Drops creates/renames whose username belongs to someone else; returns warnings.

    `taken`: username -> owner key ("<source>|<external_id>") for usernames already in idhub.
    Two entries of this run asking for one name: the first wins.
    """
    kept: list[UserChange] = []
    warnings: list[str] = []
    claimed: dict[str, str] = {}
    for change in changes:
        wants_name = change.kind == "create" or "username" in change.fields
        if not wants_name:
            kept.append(change)
            continue
        owner = taken.get(change.username)
        mine = f"|{change.external_id}"
        if (owner is not None and not owner.endswith(mine)) or (
            claimed.get(change.username, change.external_id) != change.external_id
        ):
            warnings.append(
                f"username {change.username!r} (id {change.external_id}) is already used "
                "by another user; entry skipped"
            )
            continue
        claimed[change.username] = change.external_id
        kept.append(change)
    return kept, warnings


def check_brake(
    plan: SyncPlan,
    *,
    enabled_in_store: int,
    max_disable_ratio: float,
    full_listing: bool,
) -> str | None:
    """Why this plan must not be applied without `--force`, or None.

    `full_listing`: the run enumerated every user of the source (full run or id pass), so an
    empty result means the directory claims to have nobody.
    """
    if not plan.complete:
        return (
            f"the directory returned a truncated result after {plan.entries_seen} entries "
            "(size or time limit); nothing was changed"
        )
    if full_listing and plan.entries_seen == 0 and enabled_in_store > 0:
        return (
            f"the directory returned no users while idhub has {enabled_in_store} enabled users "
            "from this source; nothing was changed"
        )
    # Dropping a link is as drastic for a person as a disable: both count.
    disables = sum(1 for c in plan.changes if c.kind in ("disable", "unlink"))
    if enabled_in_store and disables > max_disable_ratio * enabled_in_store:
        ratio = disables / enabled_in_store
        return (
            f"the run would disable {disables} of {enabled_in_store} users ({ratio:.0%}), more "
            f"than the allowed {max_disable_ratio:.0%}; nothing was changed. Check the dry run "
            "(--dry-run) and re-run with --force if this is intended"
        )
    return None


# ------------------------------------------------------------------ groups


def resolve_memberships(
    groups: Iterable[SourceGroup],
    user_member_of: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, set[str]]:
    """Effective members of every group, nested groups expanded.

    Returns group external id -> normalised DNs of the (non-group) members. Edges come from
    the groups' `member` values and from `memberOf` on users and groups; cycles are harmless.
    """
    groups = list(groups)
    by_dn = {normalise_dn(g.dn): g for g in groups}
    # group DN -> DNs of its direct members (users and groups)
    members_of: dict[str, set[str]] = {key: set() for key in by_dn}
    for key, group in by_dn.items():
        for member in group.members:
            members_of[key].add(dn_key(member))
        for parent in group.member_of:
            parent_key = normalise_dn(parent)
            if parent_key in members_of:
                members_of[parent_key].add(key)
    for user_dn, parents in (user_member_of or {}).items():
        user_key = dn_key(user_dn)
        for parent in parents:
            parent_key = normalise_dn(parent)
            if parent_key in members_of:
                members_of[parent_key].add(user_key)
    # A walk per group, no memo: memoising inside a cycle would freeze partial answers, and
    # real nesting is shallow, so this stays linear in practice.
    resolved: dict[str, set[str]] = {}
    for key in by_dn:
        users: set[str] = set()
        seen = {key}
        stack = [key]
        while stack:
            for member in members_of[stack.pop()]:
                if member in by_dn:
                    if member not in seen:
                        seen.add(member)
                        stack.append(member)
                else:
                    users.add(member)
        resolved[key] = users
    return {by_dn[key].external_id: members for key, members in resolved.items()}


def plan_memberships(
    desired: Mapping[int, set[int]],
    current: Mapping[int, set[int]],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(adds, removes) as (group_id, user_id) pairs."""
    adds: list[tuple[int, int]] = []
    removes: list[tuple[int, int]] = []
    for group_id in set(desired) | set(current):
        want = desired.get(group_id, set())
        have = current.get(group_id, set())
        adds.extend((group_id, u) for u in sorted(want - have))
        removes.extend((group_id, u) for u in sorted(have - want))
    return adds, removes

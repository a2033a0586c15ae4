"""Groups an admin keeps by hand (`idhub group ...`): add, add and remove members, remove.

A local group may hold people from any source (a project team of LDAP and DingTalk users):
sync only ever changes the memberships of the groups its own source owns. The members of a
source-owned group are that source's, so changing them here is refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.directory.local_admin import (
    AdminGroup,
    DirectoryCounter,
    LocalDirectoryStore,
    Person,
    find_group,
    find_person,
    require_local,
    require_name,
)
from idhub.core.identifiers import canonical_name
from idhub.core.identity import LOCAL_SOURCE
from idhub.core.transactions import UnitOfWork
from idhub.errors import Conflict


@dataclass(frozen=True)
class MembershipOutcome:
    group: str
    changed: list[str] = field(default_factory=list)  # usernames added (or removed)
    unchanged: list[str] = field(default_factory=list)  # already members (or already not)


def _target(name: str) -> str:
    return f"group:{name}"


class LocalGroups:
    def __init__(
        self, store: LocalDirectoryStore, *, counter: DirectoryCounter, uow: UnitOfWork
    ) -> None:
        self._store = store
        self._counter = counter
        self._uow = uow

    def all(self) -> list[AdminGroup]:
        return sorted(self._store.groups(), key=lambda g: g.name)

    def show(self, name: str) -> tuple[AdminGroup, list[Person]]:
        group = find_group(self._store.groups(), name)
        members = sorted(self._store.members(group.id), key=lambda p: p.username)
        return group, members

    def add(self, name: str, *, actor: Actor) -> AdminGroup:
        value = require_name("group", name)
        wanted = canonical_name(value)
        with self._uow.atomic() as tx:
            for group in self._store.groups():
                if canonical_name(group.name) == wanted:
                    owner = "" if group.source == LOCAL_SOURCE else f" (owned by {group.source})"
                    raise Conflict(f"group {group.name} already exists{owner}")
            group_id = self._store.add_group(value)
            tx.record(
                EventType.GROUP_ADDED, actor=actor, target=_target(value), details={"name": value}
            )
            self._counter.bump_directory_counter()
        return AdminGroup(group_id, value, LOCAL_SOURCE)

    def add_members(
        self, name: str, usernames: Sequence[str], *, actor: Actor
    ) -> MembershipOutcome:
        return self._change(name, usernames, actor=actor, adding=True)

    def remove_members(
        self, name: str, usernames: Sequence[str], *, actor: Actor
    ) -> MembershipOutcome:
        return self._change(name, usernames, actor=actor, adding=False)

    def _change(
        self, name: str, usernames: Sequence[str], *, actor: Actor, adding: bool
    ) -> MembershipOutcome:
        with self._uow.atomic() as tx:
            group = find_group(self._store.groups(), name)
            require_local("group", group.name, group.source)
            # Every name is found before anything changes: one unknown user changes nothing.
            people: dict[int, Person] = {}
            for username in usernames:
                person = find_person(self._store, username)
                people.setdefault(person.id, person)
            current = {p.id for p in self._store.members(group.id)}
            changed = [p for p in people.values() if (p.id in current) != adding]
            unchanged = [p for p in people.values() if (p.id in current) == adding]
            if changed:
                ids = [p.id for p in changed]
                if adding:
                    self._store.add_members(group.id, ids)
                else:
                    self._store.remove_members(group.id, ids)
                kind = EventType.GROUP_MEMBER_ADDED if adding else EventType.GROUP_MEMBER_REMOVED
                tx.record_many(
                    [
                        PendingEvent(
                            kind,
                            actor,
                            _target(group.name),
                            details={"user": p.username, "sub": p.sub, "user_source": p.source},
                        )
                        for p in changed
                    ]
                )
                self._counter.bump_directory_counter()
        return MembershipOutcome(
            group.name, [p.username for p in changed], [p.username for p in unchanged]
        )

    def remove(self, name: str, *, actor: Actor) -> tuple[str, int]:
        """Removes a local group and its memberships; (its name, how many members it had)."""
        with self._uow.atomic() as tx:
            group = find_group(self._store.groups(), name)
            require_local("group", group.name, group.source)
            members = len(self._store.members(group.id))
            self._store.remove_group(group.id)
            tx.record(
                EventType.GROUP_REMOVED,
                actor=actor,
                target=_target(group.name),
                details={"name": group.name, "members": members},
            )
            self._counter.bump_directory_counter()
        return group.name, members

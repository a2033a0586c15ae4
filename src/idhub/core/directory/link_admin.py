"""An admin's word on who is who: link a source's person to an idhub user, drop a link, and
list the people the sync left unlinked because their keys matched ambiguously.

Linking resolves the person's open conflict; the source's next sync then updates the user
through the link (core/directory/link_plan.py). Each change commits with its audit event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.core.audit import Actor, EventType
from idhub.core.transactions import UnitOfWork
from idhub.errors import Conflict, InvalidInput, NotFound


@dataclass(frozen=True)
class LinkRow:
    user_id: int
    source: str
    external_id: str
    linked_at: float
    linked_by: str
    key: str | None


@dataclass(frozen=True)
class Person:
    id: int
    sub: str
    username: str
    creator: str  # users.source
    links: tuple[LinkRow, ...]


class LinkStore(Protocol):
    def person(self, username: str) -> Person | None: ...
    def link_owner(self, source: str, external_id: str) -> int | None: ...
    def usernames(self, user_ids: Sequence[int]) -> dict[int, str]: ...
    def add_link(self, user_id: int, source: str, external_id: str, *, linked_by: str) -> None:
        """Also records the row's values on the user's links that had none (from now on the
        row is a blend of sources) and resolves the open conflict of (source, external_id)."""
        ...

    def remove_link(self, user_id: int, source: str) -> None: ...
    def open_conflicts(self) -> list[dict[str, Any]]: ...


class LinkAdmin:
    def __init__(self, store: LinkStore, uow: UnitOfWork) -> None:
        self._store = store
        self._uow = uow

    def _person(self, username: str) -> Person:
        person = self._store.person(username)
        if person is None:
            raise NotFound(f"no user named {username!r}")
        return person

    def link(self, username: str, source: str, external_id: str, *, actor: Actor) -> Person:
        external_id = external_id.strip()
        if not external_id or len(external_id) > 200 or not external_id.isprintable():
            raise InvalidInput("the external id must be 1-200 printable characters")
        person = self._person(username)
        owner = self._store.link_owner(source, external_id)
        if owner == person.id:
            raise Conflict(f"{person.username} is already linked to {source} {external_id}")
        if owner is not None:
            other = self._store.usernames([owner]).get(owner, f"user #{owner}")
            raise Conflict(f"{source} {external_id} is already linked to {other}")
        mine = [link for link in person.links if link.source == source]
        if mine:
            raise Conflict(
                f"{person.username} is already linked to {source} as {mine[0].external_id}; "
                f"unlink it first (idhub user unlink {person.username} {source})"
            )
        linked_by = f"admin:{actor.id}"
        with self._uow.atomic() as tx:
            self._store.add_link(person.id, source, external_id, linked_by=linked_by)
            tx.record(
                EventType.IDENTITY_LINKED,
                actor=actor,
                target=f"user:{person.username}",
                details={
                    "user_id": person.id,
                    "source": source,
                    "external_id": external_id,
                    "linked_by": linked_by,
                },
            )
        return self._person(username)

    def unlink(self, username: str, source: str, *, actor: Actor) -> Person:
        person = self._person(username)
        found = [link for link in person.links if link.source == source]
        if not found:
            raise NotFound(f"{person.username} has no link to {source}")
        if len(person.links) == 1 and person.creator != "local":
            raise Conflict(
                f"{source} is the only source of {person.username}; disable the user instead "
                f"(idhub user disable {person.username})"
            )
        if source == person.creator and len(person.links) > 1:
            raise Conflict(
                f"{source} created {person.username}; drop the other links first, or disable "
                "the user"
            )
        with self._uow.atomic() as tx:
            self._store.remove_link(person.id, source)
            tx.record(
                EventType.IDENTITY_UNLINKED,
                actor=actor,
                target=f"user:{person.username}",
                details={
                    "user_id": person.id,
                    "source": source,
                    "external_id": found[0].external_id,
                    "linked_by": f"admin:{actor.id}",
                },
            )
        return self._person(username)

    def conflicts(self) -> list[dict[str, Any]]:
        """Open conflicts, each with its candidates' usernames."""
        found = self._store.open_conflicts()
        ids = sorted({int(c) for row in found for c in row["candidates"]})
        names: Mapping[int, str] = self._store.usernames(ids) if ids else {}
        for row in found:
            row["candidate_users"] = [names.get(int(c), f"#{c}") for c in row["candidates"]]
        return found

"""Segregation of duties over a directory sync plan: the violations the planned user changes
would create (someone moved into 财务部 who also approves elsewhere), and the people whose
change must be held back because it adds a `block` violation without an exception.

The serving engine's directory is copied, the planned creates, moves, renames, enables and
disables are applied to the copy, and the same policy is compiled against it; the people the
sync touches are analysed before and after. Group and manager changes of the same run are not
in the copy: they apply, and what they bring is found at the next policy reload (and
recorded then, docs/policies.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from idhub.core.authz.canonical import canonical_directory
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import DirectorySnapshot, DirectoryUser
from idhub.core.authz.sod_analysis import SodAnalysis, Violation
from idhub.core.directory.plan import UserChange
from idhub.core.directory.ports import DutyReview
from idhub.core.identifiers import canonical_name, canonical_path
from idhub.errors import InvalidInput, PolicyError


def _path(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return canonical_path(value)
    except InvalidInput:
        return None


def planned_directory(
    directory: DirectorySnapshot, changes: Sequence[UserChange]
) -> tuple[DirectorySnapshot, dict[str, str]]:
    """The directory as it will be after the user changes, and canonical username (after) ->
    external id of each person a change touches."""
    users = dict(canonical_directory(directory).users)
    touched: dict[str, str] = {}
    for change in changes:
        if change.kind == "unlink":
            continue  # only a link goes: the person stays as they are
        name = canonical_name(change.username)
        before = change.fields.get("username", (change.username, change.username))[0]
        old = users.pop(canonical_name(str(before)), None) if change.kind != "create" else None
        entry = change.entry
        wanted = change.department()  # for a linked person: what precedence chose
        department = _path(wanted) if entry is not None and wanted else None
        if entry is None and old is not None:
            department = old.department
        disabled = entry.disabled if entry is not None else True
        if change.values is not None:
            # A linked person: only an authoritative source's disable counts (link_plan.py).
            disabled = change.disabled_reason is not None
        if change.kind == "disable":
            disabled = True
        users[name] = DirectoryUser(
            username=name,
            sub=old.sub if old is not None else "",
            department=department,
            disabled=disabled,
            groups=old.groups if old is not None else (),
        )
        touched[name] = change.external_id
    planned = dataclasses.replace(
        directory, users=users, version=f"{directory.version}+plan", canonical=False
    )
    return planned, touched


class SyncDutyReviewer:
    """`DutyReviewer` backed by the serving policy."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        *,
        now: Callable[[], float],
        refresh: Callable[[], object] | None = None,
    ) -> None:
        self._engine = engine
        self._now = now
        # Brings the serving engine up to the directory as stored (a previous run's changes).
        self._refresh = refresh

    def review(self, changes: Sequence[UserChange]) -> DutyReview:
        try:
            engine = self._engine()
            if self._refresh is not None:
                self._refresh()
                engine = self._engine()
        except PolicyError:
            return DutyReview()  # no policy loaded: nothing to check against
        if engine.policy.sod is None or not engine.policy.sod.conflicts or not changes:
            return DutyReview()
        planned, touched = planned_directory(engine.directory, changes)
        after_engine = Engine(engine.policy, planned, engine.domains, index=engine.index)
        now = self._now()
        before = SodAnalysis(engine).run(now=now, users=touched, paths=False).by_key()
        after = SodAnalysis(after_engine).run(now=now, users=touched)
        added: list[Violation] = [
            v
            for v in after.violations
            if v.key not in before or (v.blocking and not before[v.key].blocking)
        ]
        held = frozenset(touched[v.user] for v in added if v.blocking)
        return DutyReview(
            held_back=held,
            violations=tuple({**v.to_json(), "held_back": touched[v.user] in held} for v in added),
        )

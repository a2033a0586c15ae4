"""Running a directory sync: read the source, plan, check the brake, apply in batches.

The source (`adapters/ldap.py`), the store (`adapters/directory_store.py`), the audit port
and the logout service come in through the small Protocols below, so this module holds the
order of things and nothing about LDAP or SQL.

Order matters for safety and for kill -9: the whole plan is built before the first write (the
brake can only refuse a plan it has seen whole); writes go in batches, each its own
transaction keyed by the stable external id, so an interrupted run leaves a consistent prefix
and the next run plans only what is still missing; the high-water mark moves only after
a run finished, so nothing is skipped after a crash.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.clock import Clock
from idhub.core.directory.change_marks import ChangeMark, later_mark, settled_mark
from idhub.core.directory.dn import normalise_dn
from idhub.core.directory.link_plan import check_simple, plan_gone_linked, plan_linked
from idhub.core.directory.linking import (
    Candidate,
    LinkRules,
    build_index,
    canonical_keys,
    match_person,
)
from idhub.core.directory.mapping import SourceUser
from idhub.core.directory.plan import (
    StoredUser,
    SyncPlan,
    UserChange,
    check_brake,
    check_username_conflicts,
    plan_gone,
    plan_user,
    resolve_memberships,
)
from idhub.core.directory.ports import (
    AuditPort,
    DirectorySource,
    DutyReviewer,
    SessionTerminator,
    SyncState,
    SyncStore,
    TruncatedResult,
)
from idhub.core.identity import parent_paths
from idhub.core.transactions import UnitOfWork
from idhub.errors import Conflict, DirectoryError, SyncAborted

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
LEASE_SECONDS = 120.0
Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)


@dataclass
class SyncReport:
    run_id: str
    source: str
    mode: str
    dry_run: bool
    status: str  # succeeded / aborted / failed / planned
    plan: SyncPlan
    counts: dict[str, Any]
    error: str | None = None

    def as_dict(self, *, limit: int | None = None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.dry_run,
            "error": self.error,
            **self.plan.as_dict(limit=limit),
            "counts": self.counts,
        }


class DirectorySync:
    """Syncs one source. Construct per run or keep; it holds no per-run state between runs."""

    def __init__(
        self,
        *,
        source_name: str,
        directory: DirectorySource,
        store: SyncStore,
        audit: AuditPort,
        clock: Clock,
        logout: SessionTerminator | None,
        max_disable_ratio: float,
        change_mark: ChangeMark,
        membership: str,
        id_check_interval: float,
        owner: str,
        uow: UnitOfWork,
        batch_size: int = DEFAULT_BATCH,
        clock_skew: float = 30.0,
        duties: DutyReviewer | None = None,
        linking: LinkRules | None = None,
    ) -> None:
        self._uow = uow
        self._rules = linking if linking is not None else LinkRules()
        self.source = source_name
        self._dir = directory
        self._store = store
        self._audit = audit
        self._clock = clock
        self._logout = logout
        self._ratio = max_disable_ratio
        self._mark: ChangeMark = change_mark
        self._membership = membership
        self._id_interval = id_check_interval
        self._owner = owner
        self._batch = max(1, batch_size)
        self._skew = clock_skew
        self._actor = Actor("system", f"sync:{source_name}")
        self._duties = duties

    # ------------------------------------------------------------ entry point

    def run(
        self,
        *,
        full: bool = False,
        dry_run: bool = False,
        force: bool = False,
        progress: Progress | None = None,
    ) -> SyncReport:
        progress = progress or (lambda phase, done, total: None)
        state = self._store.state(self.source)
        mode = "full" if (full or state.high_water is None) else "incremental"
        run_id = secrets.token_hex(8)
        if not dry_run:
            previous = self._store.acquire_lease(self.source, self._owner, ttl=LEASE_SECONDS)
            if previous is None:
                raise Conflict(f"{self.source} is being synced by another process; try later")
            if previous:
                # The last holder died (kill -9, crash): its run row still says "running".
                self._store.fail_stale_runs(self.source)
        self._store.start_run(run_id, self.source, mode=mode, dry_run=dry_run)
        try:
            plan = self._plan(mode, state, progress)
            if plan.brake is not None and not force and not dry_run:
                return self._finish(run_id, plan, dry_run, status="aborted", error=plan.brake)
            if dry_run:
                return self._finish(run_id, plan, dry_run, status="planned")
            counts = self._apply(run_id, plan, progress)
            self._store.save_state(self.source, high_water=plan.high_water, full=mode == "full")
            return self._finish(run_id, plan, dry_run, status="succeeded", extra=counts)
        except SyncAborted:
            raise
        except Exception as exc:
            message = (
                str(exc) if isinstance(exc, DirectoryError) else f"{type(exc).__name__}: {exc}"
            )
            self._store.finish_run(run_id, status="failed", counts={}, error=message[:2000])
            self._record_run(run_id, mode, "failed", {}, message, dry_run)
            raise
        finally:
            self._dir.close()
            if not dry_run:
                self._store.release_lease(self.source, self._owner)

    def _finish(
        self,
        run_id: str,
        plan: SyncPlan,
        dry_run: bool,
        *,
        status: str,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> SyncReport:
        counts: dict[str, Any] = {**plan.counts(), **(extra or {})}
        self._store.finish_run(run_id, status=status, counts=counts, error=error, mode=plan.mode)
        self._record_run(run_id, plan.mode, status, counts, error, dry_run)
        report = SyncReport(run_id, self.source, plan.mode, dry_run, status, plan, counts, error)
        if status == "aborted":
            raise SyncAborted(error or "the sync was stopped by its safety brake")
        return report

    def _record_run(
        self,
        run_id: str,
        mode: str,
        status: str,
        counts: Mapping[str, Any],
        error: str | None,
        dry_run: bool,
    ) -> None:
        outcome = {"succeeded": "success", "planned": "success", "aborted": "denied"}.get(
            status, "error"
        )
        self._audit.record_many(
            [
                PendingEvent(
                    EventType.SYNC_RUN,
                    actor=self._actor,
                    target=f"source:{self.source}",
                    outcome=outcome,  # type: ignore[arg-type]
                    details={
                        "source": self.source,
                        "run_id": run_id,
                        "mode": mode,
                        "status": status,
                        "dry_run": dry_run,
                        "counts": dict(counts),
                        "error": error,
                    },
                )
            ]
        )

    # ------------------------------------------------------------ planning

    def _plan(self, mode: str, state: SyncState, progress: Progress) -> SyncPlan:
        plan = SyncPlan(source=self.source, mode=mode)
        # Marks are settled against the time the searches began, not ended: a second that was
        # still running when a search started may hold changes that search did not see.
        searched_at = self._clock.now()
        since = None if mode == "full" else state.high_water
        high = state.high_water if mode == "incremental" else None
        # Pages are planned as they arrive and then dropped: only the changes are kept. In a
        # full run the stored users are loaded once and each one seen is taken out, so what is
        # left at the end is exactly the users the directory no longer has.
        stored_all = self._store.stored_users(self.source) if mode == "full" else None
        enabled_in_store = (
            sum(1 for s in stored_all.values() if not s.disabled) if stored_all is not None else 0
        )
        changes: list[UserChange] = []
        try:
            for page in self._dir.user_pages(since):
                plan.warnings.extend(page.problems)
                plan.entries_seen += len(page.users) + len(page.problems)
                known = (
                    self._store.stored_users(self.source, {e.external_id for e in page.users})
                    if stored_all is None
                    else None
                )
                for entry in page.users:
                    high = later_mark(high, entry.modified, self._mark)
                    if stored_all is not None:
                        previous = stored_all.pop(entry.external_id, None)
                    else:
                        previous = known.get(entry.external_id) if known else None
                    change = self._plan_entry(previous, entry)
                    if change is not None:
                        changes.append(change)
                progress("read", plan.entries_seen, None)
        except TruncatedResult as exc:
            plan.complete = False
            plan.entries_seen = exc.seen
            plan.brake = check_brake(
                plan, enabled_in_store=0, max_disable_ratio=self._ratio, full_listing=True
            )
            return plan
        users_read = plan.entries_seen > 0
        dn_changed = any(c.kind == "create" or "dn" in c.fields for c in changes)

        full_listing = mode == "full"
        if stored_all is not None:
            gone = list(stored_all.values())
        else:
            enabled_in_store, gone = self._id_pass(plan, state)
            full_listing = enabled_in_store >= 0
            enabled_in_store = max(enabled_in_store, 0)
            if not plan.complete:
                plan.brake = check_brake(
                    plan,
                    enabled_in_store=enabled_in_store,
                    max_disable_ratio=self._ratio,
                    full_listing=True,
                )
                return plan
        changes.extend(c for s in gone if (c := self._plan_gone(s)))
        del stored_all, gone
        changes = self._link_new_people(plan, changes)
        if not enabled_in_store and any(c.kind == "disable" for c in changes):
            enabled_in_store = len(self._store.enabled_ids(self.source))

        changes, warnings = check_username_conflicts(
            changes,
            self._store.usernames_taken(
                {c.username for c in changes if c.kind == "create" or "username" in c.fields}
            ),
        )
        plan.warnings.extend(warnings)
        plan.changes = changes
        if self._duties is not None and changes:
            self._review_duties(plan)
            changes = plan.changes

        departments = self._dir.departments(since)
        for department in departments:
            high = later_mark(high, department.modified, self._mark)
        if not self._owns_tree():
            # Another source is the department source: this one's tree is not idhub's.
            departments = []
        wanted_paths = {p for c in changes if (d := c.department()) for p in parent_paths(d)}
        wanted_paths |= {p for d in departments for p in parent_paths(d.path)}
        plan.new_departments = self._store.missing_departments(wanted_paths)
        # A department an admin made in idhub is the admin's: `idhub department` refuses to
        # edit a source's departments, and in turn a source that lists the same path does not
        # overwrite its manager or order on every run (the two would take turns).
        kept = self._store.local_departments({d.path for d in departments})
        if kept:
            shown = ", ".join(sorted(kept)[:5]) + (", ..." if len(kept) > 5 else "")
            plan.warnings.append(
                f"{len(kept)} department(s) listed by {self.source} were made in idhub and keep "
                f"their own manager and order: {shown}"
            )
        plan.managers = {d.path: d.manager_dn for d in departments if d.path not in kept}
        plan.orders = {
            d.path: d.order for d in departments if d.order is not None and d.path not in kept
        }

        changed_groups, problems = self._dir.groups(since) if since else ([], [])
        for group in changed_groups:
            high = later_mark(high, group.modified, self._mark)
        users_changed = users_read if self._membership == "memberOf" else dn_changed
        if mode == "full" or changed_groups or users_changed:
            groups, problems = self._dir.groups(None)
            for group in groups:
                high = later_mark(high, group.modified, self._mark)
            plan.groups = groups
        plan.warnings.extend(problems)
        plan.high_water = settled_mark(high, self._mark, now=searched_at, skew=self._skew)
        if plan.held_back:
            # A held-back change must be planned again by the next run, not skipped as seen.
            plan.high_water = state.high_water
        plan.brake = check_brake(
            plan,
            enabled_in_store=enabled_in_store,
            max_disable_ratio=self._ratio,
            full_listing=full_listing,
        )
        return plan

    # ------------------------------------------------------------ one identity per person

    def _plan_entry(self, stored: StoredUser | None, entry: SourceUser) -> UserChange | None:
        if stored is None or check_simple(stored, self.source):
            return plan_user(stored, entry)
        return plan_linked(stored, entry, source=self.source, rules=self._rules)

    def _plan_gone(self, stored: StoredUser) -> UserChange | None:
        if check_simple(stored, self.source):
            return plan_gone(stored)
        return plan_gone_linked(stored, source=self.source, rules=self._rules)

    def _owns_tree(self) -> bool:
        wanted = self._rules.department_source
        return wanted is None or wanted == self.source

    def _link_new_people(self, plan: SyncPlan, changes: list[UserChange]) -> list[UserChange]:
        """Each person this source presents for the first time is matched against the idhub
        users by the link keys (one bulk index per run, not a query per person): one candidate
        becomes a link, an ambiguous match a conflict (neither created nor linked), no match
        a create as before. A disabled person matching someone is left alone: a source's
        leaver must not attach itself to the person who stayed."""
        rules = self._rules
        creates = [c for c in changes if c.kind == "create" and c.entry is not None]
        if not creates or not rules.link_keys:
            return changes
        index = build_index(
            (
                uid,
                canonical_keys(email=e, phone=p, employee_id=n, country_code=rules.country_code),
                src,
            )
            for uid, e, p, n, src in self._store.link_people()
        )
        dropped: set[int] = set()
        # People this run creates count as candidates for the rest of the run: two entries of
        # one source with one key are two accounts, and the second is not guessed to be
        # either of them (placeholder ids below zero: the user does not exist yet).
        fresh = Candidate(-1, frozenset({self.source}))
        links: list[tuple[UserChange, Any]] = []
        claimed: dict[int, str] = {}
        for change in creates:
            entry = change.entry
            assert entry is not None
            keys = canonical_keys(
                email=entry.email,
                phone=entry.phone,
                employee_id=entry.employee_id,
                country_code=rules.country_code,
            )
            match = match_person(keys, index, source=self.source, order=rules.link_keys)
            if match.outcome == "link" and match.user_id in claimed:
                match = replace(
                    match,
                    outcome="conflict",
                    reason=f"another person of {self.source} in this run matched the same user",
                )
            if match.outcome == "none":
                for key, value in keys.items():
                    index.setdefault(key, {}).setdefault(value, []).append(fresh)
                continue
            if match.outcome == "conflict" and any(c < 0 for c in match.candidates):
                match = replace(
                    match,
                    candidates=tuple(c for c in match.candidates if c >= 0),
                    reason=f"another person of {self.source} in this run has this "
                    f"{(match.key or '').replace('_', ' ')}",
                )
            dropped.add(id(change))
            if match.outcome == "conflict":
                plan.conflicts.append(
                    {
                        "source": self.source,
                        "external_id": entry.external_id,
                        "username": entry.username,
                        "key": match.key,
                        "candidates": list(match.candidates),
                        "reason": match.reason,
                    }
                )
                plan.warnings.append(
                    f"{entry.username} (id {entry.external_id}) not created or linked: "
                    f"{match.reason} (see `idhub sync conflicts`)"
                )
            elif entry.disabled:
                plan.warnings.append(
                    f"{entry.username} (id {entry.external_id}) is disabled in the source and "
                    "matches an existing user; not linked"
                )
            else:
                assert match.user_id is not None
                claimed[match.user_id] = entry.external_id
                links.append((change, match))
        people = self._store.stored_people(sorted(claimed)) if claimed else {}
        kept = [c for c in changes if id(c) not in dropped]
        for change, match in links:
            stored = people.get(match.user_id)
            assert change.entry is not None
            if stored is None:  # removed between the index and now: create after all
                kept.append(change)
                continue
            linked = plan_linked(stored, change.entry, source=self.source, rules=rules, match=match)
            if linked is not None:
                kept.append(linked)
        return kept

    def _review_duties(self, plan: SyncPlan) -> None:
        """Holds back each change that would add a blocking segregation-of-duties violation;
        the rest of the sync applies."""
        assert self._duties is not None
        review = self._duties.review(plan.changes)
        plan.sod = list(review.violations)
        if not review.held_back:
            return
        kept: list[UserChange] = []
        for change in plan.changes:
            if change.external_id in review.held_back:
                plan.held_back.append(change.username)
                plan.held_changes.append(change)
                rules = sorted(
                    str(v["rule"])
                    for v in review.violations
                    if v.get("held_back") and v.get("user") == change.username.casefold()
                )
                plan.warnings.append(
                    f"{change.username} ({change.kind}) held back: it would break "
                    f"segregation-of-duties rule {', '.join(rules) or '(see sod)'}"
                )
            else:
                kept.append(change)
        plan.changes = kept

    def _id_pass(self, plan: SyncPlan, state: SyncState) -> tuple[int, list[StoredUser]]:
        """Finds users gone from the source by listing only ids. (-1, []) when not due."""
        last = max(state.last_id_check_at or 0.0, state.last_full_at or 0.0)
        if self._clock.now() - last < self._id_interval:
            return -1, []
        plan.mode = "reconcile"
        present: set[str] = set()
        try:
            for ids in self._dir.user_id_pages():
                present.update(ids)
        except TruncatedResult as exc:
            plan.complete = False
            plan.entries_seen = exc.seen
            return 0, []
        enabled = self._store.enabled_ids(self.source)
        plan.entries_seen = max(plan.entries_seen, len(present))
        missing = enabled - present
        if not present:
            plan.entries_seen = 0
        stored = self._store.stored_users(self.source, missing) if missing else {}
        return len(enabled), list(stored.values())

    # ------------------------------------------------------------ applying

    def _apply(self, run_id: str, plan: SyncPlan, progress: Progress) -> dict[str, Any]:
        # Every step below commits its changes together with their `sync.change` events, one
        # transaction per batch (core/transactions.py): a run killed at any point leaves
        # every applied change with its event, and the next run plans the rest again.
        counts: dict[str, Any] = {}
        directory_changed = False
        events: list[PendingEvent] = []
        paths = {d for c in plan.changes if (d := c.department())}
        with self._uow.atomic() as tx:
            if plan.conflicts:
                self._store.record_conflicts(plan.conflicts)
                tx.record_many([self._conflict_event(run_id, found) for found in plan.conflicts])
            if plan.new_departments:
                self._store.ensure_departments(sorted(plan.new_departments), source=self.source)
                directory_changed = True
                tx.record_many(
                    [
                        self._event(
                            run_id,
                            f"department:{p}",
                            {"kind": "department_created", "path": [None, p]},
                        )
                        for p in sorted(plan.new_departments)
                    ]
                )
            department_ids = (
                self._store.ensure_departments(paths, source=self.source) if paths else {}
            )
        total = len(plan.changes)
        disabled_ids: list[int] = []
        for start in range(0, total, self._batch):
            batch = plan.changes[start : start + self._batch]
            with self._uow.atomic() as tx:
                self._store.apply_users(batch, source=self.source, department_ids=department_ids)
                tx.record_many([self._user_event(run_id, c) for c in batch])
                tx.record_many(
                    [self._link_event(run_id, c) for c in batch if c.kind in ("link", "unlink")]
                )
            disabled_ids.extend(c.user_id for c in batch if c.kind == "disable" and c.user_id)
            if any("department" in c.fields for c in batch):
                directory_changed = True
            self._store.renew_lease(self.source, self._owner, ttl=LEASE_SECONDS)
            progress("apply", min(start + self._batch, total), total)

        dn_index: dict[str, int] | None = None
        if plan.managers and self._sets_managers():
            dn_index = self._dn_index(plan)
            wanted = {
                path: (dn_index.get(normalise_dn(dn)) if dn else None)
                for path, dn in plan.managers.items()
            }
            with self._uow.atomic() as tx:
                moved = self._store.set_managers(wanted)
                tx.record_many(
                    [
                        self._event(
                            run_id,
                            f"department:{path}",
                            {"kind": "manager", "manager_user_id": [before, after]},
                        )
                        for path, (before, after) in moved.items()
                    ]
                )
            counts["managers_changed"] = len(moved)
            directory_changed = directory_changed or bool(moved)

        if plan.orders:
            with self._uow.atomic() as tx:
                reordered = self._store.set_department_orders(plan.orders)
                tx.record_many(
                    [
                        self._event(
                            run_id,
                            f"department:{path}",
                            {"kind": "order", "order": [before, after]},
                        )
                        for path, (before, after) in reordered.items()
                    ]
                )
            counts["departments_reordered"] = len(reordered)

        if plan.groups is not None:
            dn_index = dn_index if dn_index is not None else self._dn_index(plan)
            member_of = self._dir.member_of() if self._membership == "memberOf" else None
            resolved = resolve_memberships(plan.groups, member_of)
            members = {
                ext: {dn_index[m] for m in dns if m in dn_index} for ext, dns in resolved.items()
            }
            del resolved, dn_index, member_of
            dn_index = None
            with self._uow.atomic() as tx:
                group_counts, warnings, group_changes = self._store.sync_groups(
                    self.source, plan.groups, members
                )
                for change in group_changes:
                    events.append(
                        self._event(
                            run_id,
                            f"group:{change.group}",
                            {
                                "kind": "group_deleted"
                                if change.deleted
                                else ("group_created" if change.created else "membership"),
                                "members_added": list(change.added),
                                "members_removed": list(change.removed),
                            },
                        )
                    )
                tx.record_many(events)
            events = []
            plan.warnings.extend(warnings)
            counts.update(group_counts)
            directory_changed = directory_changed or bool(group_changes)
        # What the plan found against segregation of duties: findings, not changes, so they are
        # recorded on their own after the changes committed.
        findings = [
            PendingEvent(
                EventType.SOD_VIOLATION,
                actor=self._actor,
                target=f"sod:{found['rule']}",
                outcome="denied",
                details={"source": self.source, "run_id": run_id, **found},
            )
            for found in plan.sod
        ]
        for start in range(0, len(findings), DEFAULT_BATCH):
            self._audit.record_many(findings[start : start + DEFAULT_BATCH])
        if directory_changed:
            self._store.bump_directory_counter()

        ended = 0
        failed = 0
        if self._logout is not None:
            for user_id in disabled_ids:
                try:
                    ended += self._logout.logout_user_everywhere(
                        user_id, reason="directory_deprovisioned", actor=self._actor
                    )
                except Exception:
                    # The user is disabled already (sign-in and refresh check that); a failed
                    # revocation is reported, not allowed to undo the run.
                    failed += 1
                    log.exception("could not end the sessions of user %s", user_id)
            if failed:
                counts["logout_failed"] = failed
        elif disabled_ids:
            log.warning("no logout service: %d disabled users keep sessions", len(disabled_ids))
        counts["sessions_ended"] = ended
        return counts

    def _dn_index(self, plan: SyncPlan) -> dict[str, int]:
        """Stored user DNs -> ids, plus the DN the source now gives each held-back user: a
        manager or group naming them by their new DN still means them."""
        index = self._store.user_ids_by_dn(self.source)
        for change in plan.held_changes:
            if change.entry is not None and change.user_id is not None:
                index.setdefault(normalise_dn(change.entry.dn), change.user_id)
        return index

    def _event(self, run_id: str, target: str, details: dict[str, Any]) -> PendingEvent:
        return PendingEvent(
            EventType.SYNC_CHANGE,
            actor=self._actor,
            target=target,
            details={"source": self.source, "run_id": run_id, **details},
        )

    def _sets_managers(self) -> bool:
        """Department heads come from the first source listed for "manager", else from the
        department source, else (the default) from every source as before."""
        listed = self._rules.precedence.get("manager", ())
        if listed:
            return listed[0] == self.source
        return self._owns_tree()

    def _link_event(self, run_id: str, change: UserChange) -> PendingEvent:
        linked = change.kind == "link"
        details: dict[str, Any] = {
            "source": self.source,
            "external_id": change.external_id,
            "user_id": change.user_id,
            "run_id": run_id,
            "linked_by": f"sync:{self.source}",
        }
        if linked:
            details["key"] = change.link_key
        else:
            details["reason"] = "gone from source" if change.entry is None else "disabled in source"
        return PendingEvent(
            EventType.IDENTITY_LINKED if linked else EventType.IDENTITY_UNLINKED,
            actor=self._actor,
            target=f"user:{change.username}",
            details=details,
        )

    def _conflict_event(self, run_id: str, found: Mapping[str, Any]) -> PendingEvent:
        return PendingEvent(
            EventType.IDENTITY_CONFLICT,
            actor=self._actor,
            target=f"user:{found['username']}",
            outcome="denied",
            details={"run_id": run_id, **found},
        )

    def _user_event(self, run_id: str, change: UserChange) -> PendingEvent:
        return self._event(
            run_id,
            f"user:{change.username}",
            _change_details(change),
        )


def _change_details(change: UserChange) -> dict[str, Any]:
    """What an audit reader needs: for a new user its values, otherwise before/after of each
    changed field (a create's "before" would be all nulls; leaving it out keeps the trail of
    a 100,000-user first load small)."""
    details: dict[str, Any] = {"kind": change.kind, "external_id": change.external_id}
    if change.kind == "create":
        details["after"] = {k: a for k, (_, a) in change.diff().items()}
    else:
        details["changes"] = {k: [b, a] for k, (b, a) in change.fields.items()}
    return details

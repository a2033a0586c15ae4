"""`services.authz`: the live policy, its reloads, and what the rest of idhub asks of it.

A reload (file change, SIGHUP, `idhub policy reload`, another replica publishing a version)
reads the files, checks them against the live directory, runs the policy tests and builds a
new `Engine`, all off to the side; only when everything passes is the engine swapped in, in one
attribute assignment, so a request sees either the old policy or the new one. On failure the
old engine keeps serving, and the errors are logged with file:line, recorded in the audit
trail and kept for the status endpoint and metrics.

Directory changes that move derived roles (group membership, departments, managers) do not
touch the files: the same `PolicySet` is recompiled with a fresh directory snapshot.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.authz.build import Loader, Outcome, prepare_policy
from idhub.core.authz.deferred_audit import DeferredDecisionAudit, HeldSpool
from idhub.core.authz.engine import Decision, Engine
from idhub.core.authz.model import DirectorySnapshot, PolicySet
from idhub.core.authz.sod_analysis import SodReport
from idhub.core.authz.sod_gate import audit_events, gate, report_for
from idhub.core.clock import Clock
from idhub.core.identity import User
from idhub.errors import IdhubError, PolicyError, StorageError

log = logging.getLogger("idhub.authz")


class DirectoryReader(Protocol):
    def snapshot(self) -> DirectorySnapshot: ...
    def fingerprint(self) -> str: ...


class Published(Protocol):
    @property
    def version(self) -> str: ...


class PolicyStateStore(Protocol):
    def latest(self) -> Published | None: ...
    def publish(
        self, version: str, file_hashes: Mapping[str, str], *, loaded_at: float
    ) -> bool: ...


@dataclass
class Metrics:
    reloads_ok: int = 0
    reloads_rejected: int = 0
    directory_rebuilds: int = 0
    last_reload_ok: bool = True
    last_reload_at: float = 0.0
    last_reload_seconds: float = 0.0
    last_error: list[str] = field(default_factory=list)


class AuthzService:
    def __init__(
        self,
        *,
        domains: tuple[str, ...],
        load: Loader,
        directory: DirectoryReader,
        audit: Auditor,
        clock: Clock,
        state: PolicyStateStore | None = None,
        decisions: str = "sampled",
        sample_rate: float = 0.01,
        changes: Callable[[], set[str]] | None = None,
        keep: Callable[[PolicySet], None] | None = None,
        fallback: Loader | None = None,
        spool: HeldSpool | None = None,
    ) -> None:
        self.domains = domains
        self._load = load
        self._directory = directory
        self._audit = audit
        self._clock = clock
        self._state = state
        self._decisions = decisions
        self._sample_rate = sample_rate
        # Returns the policy files changed since the last call (waiting briefly for some).
        self._changes = changes
        # `keep` saves a copy of each policy that passed; `fallback` loads that copy.
        self._keep = keep
        self._fallback = fallback
        self.serving_fallback = False
        self._engine: Engine | None = None
        self._attempted = False
        self._directory_fp = ""
        self._reload_lock = threading.Lock()
        self._rejected_published: str | None = None
        self._swap_listeners: list[Callable[[], None]] = []
        self.decision_audit = DeferredDecisionAudit(audit, clock, spool=spool)
        self._to_warm: Engine | None = None
        self._warmed: Engine | None = None
        # The SoD report of the serving engine (`_sod_for`), computed when a reload needs it.
        self._sod_report: SodReport | None = None
        self._sod_for: Engine | None = None
        self.metrics = Metrics()
        self._random = random.Random()  # noqa: S311 - sampling, not security

    # ------------------------------------------------------------------ the live engine

    @property
    def engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            # Only the first use loads; after a failure, reloads come from the watcher,
            # SIGHUP, `idhub policy reload` or a published version, not from every request.
            if not self._attempted:
                self._attempted = True
                self.reload(trigger="startup")
            engine = self._engine
            if engine is None:
                raise PolicyError(
                    "no policy could be loaded: " + "; ".join(self.metrics.last_error[:3])
                )
        return engine

    @property
    def version(self) -> str:
        try:
            return self.engine.version
        except PolicyError:
            return "none"

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def roles_for(self, user: User, domain: str) -> list[str]:
        if user.disabled:
            return []
        try:
            engine = self.engine
        except PolicyError:
            # Fail closed: a token without roles grants nothing offline.
            return []
        if engine.username_for_sub(user.sub) is None:
            # Created or synced since the last poll: a token minted now would carry no roles
            # for up to a poll interval. The user exists (the caller holds the row), so a
            # refresh makes the snapshot know them; it does not repeat for them.
            try:
                if self.refresh_directory():
                    engine = self.engine
            except StorageError:
                pass  # the poll retries; meanwhile the token carries the roles known now
        return engine.roles_for(user.username, domain)

    # ------------------------------------------------------------------ reloads

    def reload(self, *, trigger: str, actor: Actor | None = None) -> Outcome:
        """Prepares the policy off to the side; swaps it in only if everything passes."""
        with self._reload_lock:
            snapshot: DirectorySnapshot | None = None
            try:
                snapshot = self._directory.snapshot()
            except IdhubError as exc:
                outcome = Outcome(None, None, errors=(f"directory: {exc}",))
            else:
                outcome = prepare_policy(self._load, snapshot, self.domains, warm=False)
            report = report_for(outcome, now=self._clock.now())
            if report is not None and report.blocking and snapshot is not None:
                # Only a policy with blocking violations needs the baseline to compare with.
                baseline = self._sod_baseline(snapshot)
                outcome = gate(outcome, report, baseline, now=self._clock.now())
            self._finish(outcome, trigger, actor or Actor.system(), report)
            # Without a directory there is nothing to compile the last good policy against.
            unserved = outcome.engine is None and self._engine is None
            if unserved and self._fallback is not None and snapshot is not None:
                self._serve_last_good(snapshot, outcome)
            if outcome.engine is not None:
                self._directory_fp = outcome.engine.directory.version
                self._warm_later(outcome.engine)
                if self._keep is not None and outcome.policy is not None:
                    try:
                        self._keep(outcome.policy)
                    except IdhubError as exc:
                        log.warning("could not keep a copy of the good policy: %s", exc)
            return outcome

    def _sod_baseline(self, snapshot: DirectorySnapshot) -> SodReport | None:
        """The SoD report a new policy is compared with: the serving engine's, else the last
        good copy's on the same directory (None when there is neither)."""
        engine = self._engine
        if engine is not None:
            if self._sod_for is not engine:
                # The directory moved since the last report: what it brought is found now.
                fresh = report_for(Outcome(engine, engine.policy), now=self._clock.now())
                if fresh is not None and self._sod_for is not None:
                    self._record_sod(fresh, Actor.system(), engine.version)
                self._sod_report, self._sod_for = fresh, engine
            return self._sod_report
        if self._fallback is None:
            return None
        last_good = prepare_policy(self._fallback, snapshot, self.domains, warm=False)
        return report_for(last_good, now=self._clock.now())

    def _serve_last_good(self, snapshot: DirectorySnapshot, failed: Outcome) -> None:
        """With nothing serving (a start with broken files), serves the copy of the last
        policy that passed here, rather than no policy at all; the failure stays visible."""
        assert self._fallback is not None
        outcome = prepare_policy(self._fallback, snapshot, self.domains, warm=False)
        if outcome.engine is None:
            log.error(
                "the last good policy does not load either: %s",
                "; ".join((outcome.errors + outcome.failed_tests)[:3]),
            )
            return
        self._engine = outcome.engine
        self._directory_fp = outcome.engine.directory.version
        gc.freeze()
        self.serving_fallback = True
        log.error(
            "serving the last good policy %s until the files are fixed", outcome.engine.version
        )

    def _finish(
        self, outcome: Outcome, trigger: str, actor: Actor, report: SodReport | None = None
    ) -> None:
        m = self.metrics
        m.last_reload_at = self._clock.now()
        m.last_reload_seconds = outcome.seconds
        hashes = dict(outcome.policy.file_hashes) if outcome.policy else {}
        previous = self._engine.version if self._engine else None
        if outcome.engine is None:
            m.reloads_rejected += 1
            m.last_reload_ok = False
            m.last_error = list(outcome.errors + outcome.failed_tests)
            for line in m.last_error[:20]:
                log.error("policy rejected (%s): %s", trigger, line)
            log.error("still serving policy %s", previous or "(none)")
            self._record(
                EventType.POLICY_REJECTED,
                actor,
                "failure",
                {
                    "trigger": trigger,
                    "serving": previous,
                    "errors": list(outcome.errors[:20]),
                    "failed_tests": list(outcome.failed_tests[:20]),
                    "files": hashes,
                },
            )
            return
        self._engine = outcome.engine
        self.serving_fallback = False
        # The engine lives until the next reload: keep the collector from rescanning it
        # (freed objects still go by reference counting).
        gc.freeze()
        m.reloads_ok += 1
        m.last_reload_ok = True
        m.last_error = []
        for line in outcome.warnings[:20]:
            log.warning("policy: %s", line)
        log.info(
            "policy %s loaded (%s) in %.2fs, %d tests passed",
            outcome.engine.version,
            trigger,
            outcome.seconds,
            outcome.tests_run,
        )
        # The first process to publish a version records it; replicas that follow the
        # published version (or restart on it) do not repeat the event.
        first = True
        if self._state is not None and outcome.policy is not None:
            try:
                first = self._state.publish(
                    outcome.policy.version, hashes, loaded_at=self._clock.now()
                )
            except IdhubError as exc:
                log.warning("could not publish policy version: %s", exc)
        if previous != outcome.engine.version and first:
            self._record(
                EventType.POLICY_RELOADED,
                actor,
                "success",
                {
                    "trigger": trigger,
                    "version": outcome.engine.version,
                    "previous": previous,
                    "files": hashes,
                    "tests": outcome.tests_run,
                    "warnings": len(outcome.warnings),
                },
            )
            if report is not None:
                self._record_sod(report, actor, outcome.engine.version)
        self._sod_report, self._sod_for = report, outcome.engine

    def _record_sod(self, report: SodReport, actor: Actor, version: str) -> None:
        """Violations, exceptions granted and expired that this version brings."""
        previous = self._sod_report if self._sod_for is not None else None
        events = audit_events(report, previous, actor=actor, version=version, now=self._clock.now())
        if not events:
            return
        try:
            self._audit.record_many(events)
        except IdhubError as exc:
            log.error("could not record segregation-of-duties events: %s", exc)

    def _record(
        self, event: EventType, actor: Actor, outcome: Any, details: dict[str, Any]
    ) -> None:
        try:
            self._audit.record(
                event, actor=actor, target="policy", outcome=outcome, details=details
            )
        except IdhubError as exc:
            log.error("could not record %s: %s", event, exc)

    def on_swapped(self, listener: Callable[[], None]) -> None:
        """`listener` is called after a new engine was swapped in (a server then runs
        `warm_once` in the background)."""
        self._swap_listeners.append(listener)

    def _warm_later(self, engine: Engine) -> None:
        """Computes every user's roles after the swap instead of before it: reloads stay short,
        and a request arriving first computes its own user's roles (microseconds)."""
        if self._swap_listeners:  # only in a serving process
            self._to_warm = engine
            for listener in self._swap_listeners:
                listener()

    def warm_once(self) -> bool:
        """Warms the engine swapped in last, if not done yet; True if there was one."""
        engine = self._to_warm
        if engine is None or engine is self._warmed or engine is not self._engine:
            return False  # done already, or replaced meanwhile by a newer one (queued itself)
        self._warmed = engine
        engine.warm()
        return True

    def refresh_directory(self) -> bool:
        """Recompiles the serving policy if the directory moved; True if it did."""
        engine = self._engine
        if engine is None:
            return False
        fingerprint = self._directory.fingerprint()
        if fingerprint == self._directory_fp:
            return False
        with self._reload_lock:
            engine = self._engine
            if engine is None:
                return False
            collecting = gc.isenabled()
            gc.disable()
            try:
                snapshot = self._directory.snapshot()
                fresh = Engine(engine.policy, snapshot, self.domains, index=engine.index)
            finally:
                if collecting:
                    gc.enable()
            self._engine = fresh
            gc.freeze()
            self._warm_later(fresh)
            self._directory_fp = snapshot.version
            self.metrics.directory_rebuilds += 1
            log.info("directory changed: roles recomputed, policy version %s", fresh.version)
        return True

    def poll_once(self) -> None:
        """One round of the background poll: published versions, then the directory."""
        if self._state is not None:
            latest = self._state.latest()
            serving = self._engine.policy.version if self._engine is not None else None
            if (
                latest is not None
                and latest.version != serving
                and latest.version != self._rejected_published
            ):
                outcome = self.reload(trigger="published")
                if not outcome.ok:
                    # Do not retry the same published version every poll.
                    self._rejected_published = latest.version
        self.refresh_directory()

    # ------------------------------------------------------------------ serving

    def load_for_serving(self) -> None:
        """Loads the policy now, at server start; a failure leaves the server unready (the
        next file change, published version or SIGHUP may fix it) rather than down."""
        try:
            _ = self.engine
        except PolicyError as exc:
            log.error("%s", exc)

    def check_files_once(self) -> bool:
        """Reloads if policy files changed since the last call; True if they had."""
        if self._changes is None:
            return False
        changed = self._changes()
        if changed:
            self.reload(trigger="files changed")
        return bool(changed)

    def readiness(self) -> str:
        if self._engine is None:
            return "no policy loaded" + (
                f": {self.metrics.last_error[0]}" if self.metrics.last_error else ""
            )
        return "ok"

    def degraded(self) -> str | None:
        """Why the policy serving is not the one on disk, or None: a rejected reload keeps
        the previous policy (or the last good copy) serving, which degrades, not fails."""
        if self._engine is None:
            return None  # not a warning: `readiness` fails the replica
        m = self.metrics
        first = f": {m.last_error[0]}" if m.last_error else ""
        if self.serving_fallback:
            return f"policy: serving the last good copy {self._engine.version}{first}"
        if not m.last_reload_ok:
            return f"policy: reload rejected, still serving {self._engine.version}{first}"
        return None

    def status(self) -> dict[str, Any]:
        m = self.metrics
        engine = self._engine
        return {
            "version": engine.version if engine else None,
            "policy_version": engine.policy.version if engine else None,
            "files": dict(engine.policy.file_hashes) if engine else {},
            "rules": len(engine.policy.rules) if engine else 0,
            "role_links": len(engine.links) if engine else 0,
            "last_reload_ok": m.last_reload_ok,
            "serving_last_good_copy": self.serving_fallback,
            "last_reload_at": m.last_reload_at,
            "last_reload_seconds": round(m.last_reload_seconds, 3),
            "last_error": m.last_error[:20],
            "reloads_ok": m.reloads_ok,
            "reloads_rejected": m.reloads_rejected,
            "directory_rebuilds": m.directory_rebuilds,
        }

    # ------------------------------------------------------------------ decision audit

    def record_decisions(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> int:
        """Records every denial and the allows `[audit] decisions` asks for, in one batch."""
        events = self.decision_events(decisions, actor=actor, version=version, ctx=ctx)
        self.append_decision_events(events)
        return len(events)

    def decision_events(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> list[PendingEvent]:
        """The audit events of a batch (every denial, the allows `[audit] decisions` asks
        for), built without touching the database: a batch with none needs no write at all."""
        events: list[PendingEvent] = []
        for request, decision in decisions:
            if decision.allowed:
                if self._decisions == "none":
                    continue
                if self._decisions == "sampled" and self._random.random() >= self._sample_rate:
                    continue
            details = {k: v for k, v in request.items() if v not in (None, "")}
            details["allowed"] = decision.allowed
            details["policy_version"] = version
            source = decision.source
            if source is not None:
                details["rule"] = source
            events.append(
                PendingEvent(
                    event_type=EventType.AUTHZ_DECISION,
                    actor=actor,
                    target=f"{request.get('domain')}:{request.get('type')}",
                    outcome="success" if decision.allowed else "denied",
                    details=details,
                    ctx=ctx,
                )
            )
        return events

    def append_decision_events(self, events: Sequence[PendingEvent]) -> None:
        """Writes a batch's events durably in one transaction before the caller answers;
        held in memory only while the database is away (core/authz/deferred_audit.py)."""
        if events:
            self.decision_audit.record(events)

"""The composition root: the only place that knows which adapter implements which port.

`Services` builds each part on first use, so a CLI command touching only the audit log
does not load signing keys or policies. The web app builds what it serves at start-up.
Each area keeps its wiring in its own block below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from idhub.adapters._storage_errors import as_idhub_error
from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.config import Settings
from idhub.core.clock import Clock, SystemClock
from idhub.core.metrics import NO_METRICS, Metrics, ScrapeGauge, count_sync_run
from idhub.runtime import Job, Runtime

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pathlib import Path

    from idhub.adapters.audit_archive import AuditArchives
    from idhub.adapters.audit_sink_check import SinkFileReport
    from idhub.adapters.audit_sinks import AuditShipper
    from idhub.adapters.audit_store import SqlAuditLog
    from idhub.adapters.backup import BackupSummary, RestoreSummary
    from idhub.adapters.directory_store import SqlDirectoryStore
    from idhub.adapters.identity_store import SqlIdentityStore
    from idhub.adapters.ldap import LdapDirectory
    from idhub.adapters.logout_delivery import DeliveryWorker
    from idhub.adapters.mfa_store import SqlMfaStore
    from idhub.adapters.policy_files import PolicyFiles
    from idhub.adapters.policy_watch import PolicyDirChanges
    from idhub.adapters.prometheus_metrics import PrometheusMetrics
    from idhub.adapters.session_store import SqlDeliveryStore, SqlSessionStore
    from idhub.adapters.throttle_store import SqlThrottleStore
    from idhub.adapters.token_store import SqlTokenStore
    from idhub.cas.server import CasServer
    from idhub.cas.services import CasServiceRegistry
    from idhub.cas.tickets import CasTickets
    from idhub.config import OaSourceSettings
    from idhub.core.audit import Auditor
    from idhub.core.authenticator import Authenticator
    from idhub.core.authz.audit_access import AuditReaders
    from idhub.core.authz.decisions import Decisions
    from idhub.core.authz.mfa_roles import MfaRoleRule
    from idhub.core.authz.service import AuthzService, DirectoryReader
    from idhub.core.client_guard import ClientAuthGuard
    from idhub.core.clients import ClientRegistry
    from idhub.core.consent import Consents
    from idhub.core.directory.link_admin import LinkAdmin
    from idhub.core.directory.local_departments import LocalDepartments
    from idhub.core.directory.local_groups import LocalGroups
    from idhub.core.directory.ports import DirectorySource
    from idhub.core.directory.scheduler import SyncScheduler
    from idhub.core.directory.sync import DirectorySync
    from idhub.core.failure_audit import FailureAudit
    from idhub.core.identity import PasswordVerifier, User
    from idhub.core.logout import LogoutService
    from idhub.core.mfa import SecondFactors
    from idhub.core.passkeys import Passkeys
    from idhub.core.password_policy import LocalPasswords
    from idhub.core.passwords import PasswordHasher
    from idhub.core.readiness import Readiness
    from idhub.core.remembered_devices import RememberedDevices
    from idhub.core.request_budget import RequestBudget
    from idhub.core.scim.service import ScimService
    from idhub.core.sessions import SsoSessions
    from idhub.core.signin import SignInCore, SignInFactors
    from idhub.core.throttle import Throttle
    from idhub.core.transactions import UnitOfWork
    from idhub.core.upstream import UpstreamProvider
    from idhub.core.upstream_flow import AccountsByProvider, UpstreamSignIn
    from idhub.oidc.housekeeping import TokenHousekeeping
    from idhub.oidc.introspection import TokenEndpoints, TokensRevoker
    from idhub.oidc.introspection_lean import LeanIntrospection
    from idhub.oidc.keys import KeyStore
    from idhub.oidc.minter import TokenMinter
    from idhub.oidc.revocations import MirroredRevocations
    from idhub.oidc.server import Provider
    from idhub.oidc.tokens import AccessTokens, IdTokens
    from idhub.saml.idp import IdentityProvider
    from idhub.saml.keys import SamlKeys
    from idhub.saml.registry import SpRegistry
    from idhub.saml.requests import PendingRequests

# What an exception that escaped every layer stands for in idhub's error tree (a database
# failure a store did not translate becomes its StorageError), for the CLI's entry point and
# the web layer's last-resort handler, which may not import adapters themselves.
translate_failure = as_idhub_error


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._engine = engine
        # Lifecycle hooks each area registers in `_register_hooks` (lazily: nothing is built
        # until a hook runs). `echo` prints progress for `idhub init`.
        self.init_steps: list[Callable[[Callable[[str], None]], None]] = []
        self.demo_steps: list[Callable[[Callable[[str], None]], None]] = []
        # The background jobs of a server process, started and stopped by the web app's
        # lifespan; registering one builds nothing until the runtime starts it.
        self.runtime = Runtime(now=self.clock.now)
        # name -> probe returning "ok" or a short reason, shown by /readyz.
        self.readiness_checks: dict[str, Callable[[], str]] = {}
        # Sources of warning lines: shown by /readyz as "degraded", never failing it.
        self.readiness_warnings: list[Callable[[], list[str]]] = []
        self._register_hooks()
        # What every part counts through; `start_metrics` (the web app) replaces the default
        # that counts nothing. Areas append values read at scrape time to `scrape_gauges`
        # (clock offset, ...) before the app starts.
        self.metrics: Metrics = NO_METRICS
        self.scrape_gauges: list[ScrapeGauge] = []

    def _register_hooks(self) -> None:
        # --- oidc hooks (keys on init, demo clients) ---
        self.init_steps.append(self._ensure_signing_keys)
        self._add_token_housekeeping_job()
        self._add_cas_housekeeping_job()
        # --- sessions/login hooks (demo users, logout delivery and session housekeeping) ---
        self.demo_steps.append(self._seed_demo)
        self._add_logout_jobs()
        self.readiness_checks["logout_delivery"] = self._logout_delivery_ready
        # --- authorization hooks (policy load, poll, watch, SIGHUP, warm-up; readiness) ---
        self._add_authz_jobs()
        self.readiness_checks["policy"] = self._authz_ready
        # --- directory sync hooks (scheduler) ---
        if self.settings.ldap_sources or self.settings.oa_sources:
            self._add_sync_job()
        # --- audit hooks (sinks) ---
        if self.settings.audit.jsonl_path is not None or self.settings.audit.syslog:
            self._add_audit_sinks_job()
            # A sink behind or failing degrades /readyz; it does not take the replica out.
            self.readiness_warnings.append(self._audit_sinks_warnings)
        # --- background jobs: a stopped one fails /readyz, a failing one is a warning ---
        self.readiness_checks["background_jobs"] = self._jobs_ready
        self.readiness_warnings.append(self.runtime.warnings)
        # --- outage: the revocation list's copy, held decision records; signing keys, the
        # policy's reload state ---
        self._add_revocation_mirror_job()
        self._add_decision_audit_job()
        self._add_failure_audit_job()
        self.readiness_checks["keys"] = self._keys_ready
        self.readiness_warnings.append(self._policy_warnings)

    @cached_property
    def engine(self) -> Engine:
        return self._engine or create_db_engine(self.settings.database)

    def migrate(self) -> None:
        apply_migrations(self.engine)

    def close(self) -> None:
        for provider in self.__dict__.get("upstream_providers", ()):
            closer = getattr(provider, "close", None)
            if closer is not None:
                closer()
        if "engine" in self.__dict__ and self._engine is None:
            self.engine.dispose()

    # --- audit -----------------------------------------------------------------------------

    @cached_property
    def audit(self) -> Auditor:
        """The port every area records through."""
        return self.audit_log

    @cached_property
    def audit_log(self) -> SqlAuditLog:
        """The same log with its admin side: search, verify, archive (CLI and audit API)."""
        from idhub.adapters.audit_store import SqlAuditLog

        return SqlAuditLog(self.engine, self.clock)

    # --- units of work: a change and its audit events in one transaction ----------------------

    @cached_property
    def unit_of_work(self) -> UnitOfWork:
        """`atomic()` blocks in which store writes and audit events commit together."""
        from idhub.adapters.unit_of_work import SqlUnitOfWork

        return SqlUnitOfWork(self.engine, self.audit_log)

    @cached_property
    def audit_shipper(self) -> AuditShipper | None:
        """Streams the trail to the configured JSON-lines file / syslog (None if neither)."""
        from idhub.adapters.audit_sinks import build_shipper

        return build_shipper(self.audit_log, self.settings)

    def _add_audit_sinks_job(self) -> None:
        def shipper() -> AuditShipper:
            shipper = self.audit_shipper
            assert shipper is not None, "registered only when a sink is configured"
            return shipper

        self.runtime.add(
            Job(
                name="audit-sinks",
                run_once=lambda: shipper().ship_once(),
                interval=1.0,
                wake_on=lambda listener: self.audit_log.listeners.append(listener),
                prepare=lambda: shipper().prepare(),
                finish=lambda: shipper().close(),
            )
        )

    def _audit_sinks_warnings(self) -> list[str]:
        if "audit_shipper" not in self.__dict__ or self.audit_shipper is None:
            return []
        found = []
        stopped = self.runtime.readiness_of("audit-sinks", stopped="audit shipper stopped")
        if stopped != "ok":
            found.append(stopped)
        lag = self.audit_shipper.lag()
        self.health.gauges.sink_lag = lag
        for name, error in sorted(self.audit_shipper.errors.items()):
            behind = lag.get(name)
            count = f", {behind} events behind" if behind else ""
            found.append(f"audit sink {name} failing{count}: {error}")
        return found

    # --- operate: metrics ------------------------------------------------------------------

    @cached_property
    def prometheus(self) -> PrometheusMetrics | None:
        """The Prometheus side of `metrics` (None when `[metrics] enabled = false`)."""
        if not self.settings.metrics.enabled:
            return None
        from idhub.adapters.prometheus_metrics import PrometheusMetrics

        return PrometheusMetrics(multiprocess_dir=self.settings.metrics.multiprocess_dir)

    def start_metrics(self) -> None:
        """Counts from here on: audit events, audit write latency, the pool, decisions, and
        the values read at scrape time. Called once by the web app; the CLI counts nothing."""
        prom = self.prometheus
        if prom is None or self.metrics is prom:
            return
        from idhub.core.metrics import count_audit_events

        self.metrics = prom

        def observe(events: list[tuple[str, str | None, dict[str, object]]]) -> None:
            # A committed batch (never before its COMMIT): one counter write per label set.
            try:
                count_audit_events(prom, events)
            except Exception as exc:  # a metric must never fail an append that committed
                _log.warning("%d audit events not counted: %s", len(events), type(exc).__name__)

        self.audit_log.observers.append(observe)
        self.audit_log.write_timers.append(
            lambda seconds: prom.observe("idhub_audit_append_duration_seconds", seconds)
        )
        prom.watch_pool(self.engine)
        self.decisions.metrics = prom
        for gauge in self._operate_gauges() + self.scrape_gauges:
            prom.add_scrape_gauge(gauge)

    def _operate_gauges(self) -> list[ScrapeGauge]:
        def policy_state() -> dict[str, float] | None:
            if "authz" not in self.__dict__:
                return None
            status = self.authz.status()
            return {
                "loaded": 1.0 if status["version"] else 0.0,
                "last_reload_ok": 1.0 if status["last_reload_ok"] else 0.0,
                "serving_last_good_copy": 1.0 if status["serving_last_good_copy"] else 0.0,
            }

        def policy_version() -> dict[str, float] | None:
            if "authz" not in self.__dict__:
                return None
            return {str(self.authz.version): 1.0}

        def sink_lag() -> dict[str, float] | None:
            shipper = self.audit_shipper if "audit_shipper" in self.__dict__ else None
            if shipper is None:
                return None
            head = self.audit_log.head()
            top = head.seq if head is not None else 0
            return {s.name: float(max(0, top - (s.position() or 0))) for s in shipper.sinks}

        pool = self.engine.pool
        size = getattr(pool, "size", None)
        return [
            ScrapeGauge(
                "idhub_sessions_active",
                "SSO sessions not ended and not expired (all replicas)",
                lambda: float(self.session_store.count_active(self.clock.now())),
            ),
            ScrapeGauge(
                "idhub_policy_state", "1 when true: loaded, last_reload_ok, ...", policy_state,
                label="state",
            ),
            ScrapeGauge(
                "idhub_policy_version_info", "The policy version this process serves",
                policy_version, label="version",
            ),
            ScrapeGauge(
                "idhub_audit_sink_lag_events", "Audit events not yet in each sink", sink_lag,
                label="sink",
            ),
            ScrapeGauge(
                "idhub_db_pool_size", "Connections this process's pool keeps open",
                lambda: float(size()) if callable(size) else None,
            ),
            ScrapeGauge(
                "idhub_background_jobs_failing", "Background jobs whose last run failed",
                lambda: float(len(self.runtime.warnings())),
            ),
            *self._outage_gauges(),
        ]  # fmt: skip

    def _outage_gauges(self) -> list[ScrapeGauge]:
        """What the last readiness check read (`health.gauges`) and the outage counters of
        this process, read at scrape time without touching the database."""
        gauges = self.health.gauges

        def held(attribute: str) -> float | None:
            if "authz" not in self.__dict__:
                return None
            return float(getattr(self.authz.decision_audit, attribute))

        return [
            ScrapeGauge(
                "idhub_clock_offset_seconds",
                "Database server's clock minus this replica's, at the last readiness check",
                lambda: gauges.clock_offset,
            ),
            ScrapeGauge(
                "idhub_database_reachable", "1 when the last readiness check reached the database",
                lambda: None if gauges.database_reachable is None
                else float(gauges.database_reachable),
            ),
            ScrapeGauge(
                "idhub_database_stalls", "Round trips or connects that ran out of time (process)",
                lambda: float(self.database_stalls()),
            ),
            ScrapeGauge(
                "idhub_decision_audit_held", "Decision records waiting for the database",
                lambda: held("held"),
            ),
            ScrapeGauge(
                "idhub_decision_audit_dropped", "Decision records dropped past the holding limit",
                lambda: held("dropped"),
            ),
            ScrapeGauge(
                "idhub_revocations_answered_from_memory",
                "Revocation checks answered from the in-memory copy while the database was away",
                lambda: float(self.revocations.answered_from_memory),
            ),
        ]  # fmt: skip

    # --- operate: backup and restore ---------------------------------------------------------

    def backup(self, target: Path) -> BackupSummary:
        """The database's content and the policy files in one archive (adapters/backup.py)."""
        from importlib.metadata import version

        from idhub.adapters.backup import write_backup

        return write_backup(
            self.engine,
            policy_dir=self.settings.policy.dir,
            target=target,
            created_at=self.clock.now(),
            version=version("idhub"),
        )

    def restore(self, source: Path, *, policies: Path | None = None) -> RestoreSummary:
        """Migrates this (empty) database, loads the archive, writes the policy files when
        their directory is empty, and checks the restored audit chain."""
        from dataclasses import replace

        from idhub.adapters.backup import Archive, restore_backup, restore_policies
        from idhub.core.crypto import Sealer

        archive = Archive(source)
        try:
            self.migrate()
            sealer = Sealer(self.settings.require_secret_key())
            summary = restore_backup(self.engine, archive, unseal=sealer.open)
            into = policies or self.settings.policy.dir
            notes = [restore_policies(archive, into)]
        finally:
            archive.close()
        report = self.audit_log.verify()
        notes.append(
            f"audit chain verifies: {report.checked} event(s)"
            if report.ok
            else f"audit chain does NOT verify: {report.problem}"
        )
        return replace(summary, policies_written=into, notes=notes)

    # --- identity / directory store ----------------------------------------------------------

    @cached_property
    def identity(self) -> SqlIdentityStore:
        from idhub.adapters.identity_store import SqlIdentityStore

        return SqlIdentityStore(self.engine, self.clock)

    # --- oidc: keys, clients, tokens ---------------------------------------------------------

    @cached_property
    def clients(self) -> ClientRegistry:
        from idhub.adapters.client_store import SqlClientStore
        from idhub.core.clients import ClientRegistry
        from idhub.core.crypto import KeyedHasher

        return ClientRegistry(
            SqlClientStore(self.engine),
            KeyedHasher(self.settings.require_secret_key(), "client-secret"),
            self.audit,
            clock=self.clock,
            default_access_token_alg=self.settings.tokens.default_access_token_alg,
            uow=self.unit_of_work,
        )

    @cached_property
    def keys(self) -> KeyStore:
        from idhub.adapters.key_store import SqlKeyStore
        from idhub.core.crypto import Sealer
        from idhub.oidc.keys import KeyStore

        tokens = self.settings.tokens
        return KeyStore(
            SqlKeyStore(self.engine),
            Sealer(self.settings.require_secret_key()),
            self.audit,
            clock=self.clock,
            # A retired key stays published until the longest-lived token it signed expired.
            retire_for=max(tokens.access_token_ttl, tokens.id_token_ttl) + 300,
            uow=self.unit_of_work,
        )

    @cached_property
    def token_store(self) -> SqlTokenStore:
        from idhub.adapters.token_store import SqlTokenStore

        return SqlTokenStore(self.engine)

    @cached_property
    def access_tokens(self) -> AccessTokens:
        from idhub.oidc.tokens import AccessTokens

        return AccessTokens(
            self.keys,
            self.revocations,
            issuer=self.settings.server.issuer,
            clock=self.clock,
            ttl=self.settings.tokens.access_token_ttl,
            leeway=self.settings.tokens.clock_skew,
            clients=self.clients,
        )

    @cached_property
    def revocations(self) -> MirroredRevocations:
        """The revocation list, with the copy in memory that answers during an outage."""
        from idhub.adapters.revocation_probe import revocation_probe
        from idhub.oidc.revocations import MirroredRevocations

        return MirroredRevocations(
            self.token_store, self.clock, probe=revocation_probe(self.engine)
        )

    def _add_revocation_mirror_job(self) -> None:
        # Every 2 s: what a token check may miss when the database goes away is what was
        # revoked in the last two seconds before.
        self.runtime.add(
            Job(
                name="revocation-mirror",
                run_once=lambda: self.revocations.refresh_once(),
                interval=2.0,
                retry=1.0,
            )
        )

    @cached_property
    def id_tokens(self) -> IdTokens:
        from idhub.oidc.tokens import IdTokens

        return IdTokens(
            self.keys,
            issuer=self.settings.server.issuer,
            clock=self.clock,
            ttl=self.settings.tokens.id_token_ttl,
        )

    @cached_property
    def token_minter(self) -> TokenMinter:
        from idhub.core.crypto import KeyedHasher, Sealer
        from idhub.oidc.minter import TokenMinter

        return TokenMinter(
            access_tokens=self.access_tokens,
            id_tokens=self.id_tokens,
            identity=self.identity,
            audit=self.audit,
            clock=self.clock,
            refresh_hasher=KeyedHasher(self.settings.require_secret_key(), "refresh-token"),
            refresh_ttl=self.settings.tokens.refresh_token_ttl,
            domains=tuple(self.settings.policy.domains),
            # Resolved at the first token, not when the minter is built.
            roles=lambda: self.authz,
            uow=self.unit_of_work,
            refresh_sealer=Sealer(self.settings.require_secret_key(), "refresh-successor"),
            refresh_grace=self.settings.tokens.refresh_reuse_grace,
        )

    @cached_property
    def token_endpoints(self) -> TokenEndpoints:
        """Introspection, revocation and userinfo behind client authentication."""
        from idhub.oidc.introspection import TokenEndpoints

        return TokenEndpoints(
            access_tokens=self.access_tokens,
            revocations=self.revocations,
            minter=self.token_minter,
            tokens=self.token_store,
            identity=self.identity,
            audit=self.audit,
            clock=self.clock,
            uow=self.unit_of_work,
        )

    @cached_property
    def introspection(self) -> LeanIntrospection:
        """`/introspect`: the lean path for the common request, the provider's otherwise."""
        from idhub.oidc.introspection_lean import LeanIntrospection

        return LeanIntrospection(
            provider=self.oidc,
            endpoints=self.token_endpoints,
            registry=self.clients,
            guard=self.client_guard,
            joint_read=self.throttle_store.counters_and_revoked,
        )

    @cached_property
    def oidc(self) -> Provider:
        from idhub.oidc.client_auth import PrivateKeyJWT
        from idhub.oidc.server import Provider

        issuer_url = self.settings.server.issuer.rstrip("/")
        endpoints = self.token_endpoints
        return Provider(
            issuer_url=self.settings.server.issuer,
            registry=self.clients,
            minter=self.token_minter,
            tokens=self.token_store,
            access_tokens=self.access_tokens,
            audit=self.audit,
            clock=self.clock,
            code_ttl=self.settings.tokens.code_ttl,
            assertion_auth=PrivateKeyJWT(
                self.token_store,
                clock=self.clock,
                audiences=lambda: [issuer_url + "/token", issuer_url, issuer_url + "/"],
            ),
            userinfo=endpoints.userinfo,
            introspect=endpoints.introspect,
            revoke=endpoints.revoke,
            client_guard=self.client_guard,
            failures=self.failure_audit,
        )

    @cached_property
    def tokens_revoker(self) -> TokensRevoker:
        from idhub.oidc.introspection import TokensRevoker

        return TokensRevoker(self.token_store, self.clock)

    def _ensure_signing_keys(self, echo: Callable[[str], None]) -> None:
        self.keys.ensure_active(echo)

    @cached_property
    def token_housekeeping(self) -> TokenHousekeeping:
        from idhub.oidc.housekeeping import TokenHousekeeping

        return TokenHousekeeping(self.token_store, self.clock)

    def _add_token_housekeeping_job(self) -> None:
        # Waits a full interval first: start-up is busy enough, and a restart loop must not
        # purge in a burst.
        self.runtime.add(
            Job(
                name="token-housekeeping",
                run_once=lambda: self.token_housekeeping.purge_once(),
                interval=600.0,
                delay=600.0,
                retry=30.0,
            )
        )

    # --- sessions, login, logout ---------------------------------------------------------------

    @cached_property
    def password_hasher(self) -> PasswordHasher:
        from idhub.core.passwords import PasswordHasher

        passwords = self.settings.passwords
        return PasswordHasher(
            time_cost=passwords.argon2_time_cost,
            memory_cost=passwords.argon2_memory_kib,
            parallelism=passwords.argon2_parallelism,
        )

    @cached_property
    def session_store(self) -> SqlSessionStore:
        from idhub.adapters.session_store import SqlSessionStore

        return SqlSessionStore(self.engine)

    @cached_property
    def sessions(self) -> SsoSessions:
        from idhub.core.sessions import SsoSessions

        return SsoSessions(self.session_store, self.clock, ttl=self.settings.tokens.session_ttl)

    @cached_property
    def consents(self) -> Consents:
        from idhub.core.consent import Consents

        return Consents(self.session_store, self.audit, self.clock, uow=self.unit_of_work)

    @cached_property
    def signin(self) -> SignInCore:
        """The one sign-in decision every front door asks (core/signin.py)."""
        from idhub.core.crypto import KeyedHasher
        from idhub.core.login_tickets import LoginTickets
        from idhub.core.signin import SignInCore

        return SignInCore(
            sessions=self.sessions,
            users=self.identity,
            consents=self.consents,
            authenticator=self.authenticator,
            logout=self.logout,
            tickets=LoginTickets(KeyedHasher(self.settings.require_secret_key(), "login-after")),
            clock=self.clock,
            mfa=self.signin_factors,
            uow=self.unit_of_work,
        )

    @cached_property
    def authenticator(self) -> Authenticator:
        from idhub.core.authenticator import Authenticator
        from idhub.core.crypto import KeyedHasher
        from idhub.core.passwords import LocalPasswordVerifier

        def verifier_for(source: str) -> PasswordVerifier | None:
            # Looked up at sign-in, so LDAP connections are made only when an LDAP user signs in.
            return self.password_verifiers.get(source)

        return Authenticator(
            users=self.identity,
            local_verifier=LocalPasswordVerifier(self.identity, self.password_hasher),
            verifier_for=verifier_for,
            hasher=self.password_hasher,
            audit=self.audit,
            clock=self.clock,
            throttle=self.throttle,
            fingerprint=KeyedHasher(self.settings.require_secret_key(), "typed-username").hash,
            failures=self.failure_audit,
        )

    @cached_property
    def logout(self) -> LogoutService:
        from idhub.adapters.logout_delivery import HttpLogoutChannel
        from idhub.adapters.session_store import SqlDeliveryStore
        from idhub.core.logout import LogoutService

        service = LogoutService(
            sessions=self.sessions,
            users=self.identity,
            clients=lambda: self.clients,
            signer=lambda: self.id_tokens,
            revoker=lambda: self.tokens_revoker,
            deliveries=SqlDeliveryStore(self.engine),
            channel=HttpLogoutChannel(),
            audit=self.audit,
            clock=self.clock,
            uow=self.unit_of_work,
        )
        self._register_cas_logout(service)
        self._register_saml_logout(service)
        return service

    @cached_property
    def logout_worker(self) -> DeliveryWorker:
        from idhub.adapters.logout_delivery import DeliveryWorker

        return DeliveryWorker(self.logout)

    def _purge_old_sessions(self) -> None:
        from idhub.adapters.session_store import SqlDeliveryStore

        # Ended sessions are kept a week (support questions), delivered logouts 30 days,
        # failed ones 90 days; then they are removed.
        now = self.clock.now()
        self.session_store.purge_ended(now - 7 * 86400)
        SqlDeliveryStore(self.engine).purge(
            delivered_before=now - 30 * 86400, failed_before=now - 90 * 86400
        )

    def _add_logout_jobs(self) -> None:
        # Woken at once when a logout queued deliveries; the poll catches retries that came
        # due and other replicas' logouts.
        self.runtime.add(
            Job(
                name="logout-delivery",
                run_once=lambda: self.logout_worker.deliver_due(),
                interval=2.0,
                delay=2.0,
                wake_on=lambda listener: self.logout.on_queued(listener),
                retry=2.0,
            )
        )
        self.runtime.add(
            Job(
                name="session-housekeeping",
                run_once=self._purge_old_sessions,
                interval=3600.0,
                delay=60.0,
                retry=60.0,
            )
        )

    def _logout_delivery_ready(self) -> str:
        return self.runtime.readiness_of(
            "logout-delivery", stopped="back-channel logout worker stopped"
        )

    def _seed_demo(self, echo: Callable[[str], None]) -> None:
        from idhub.demo import seed_demo

        seed_demo(self, echo)

    # --- authorization -------------------------------------------------------------------------

    @cached_property
    def authz(self) -> AuthzService:
        from functools import partial

        from idhub.adapters.decision_spool import FileDecisionSpool
        from idhub.adapters.directory_view import SqlDirectoryView
        from idhub.adapters.policy_files import keep_last_good, load_policy_dir
        from idhub.adapters.policy_state import SqlPolicyState
        from idhub.core.authz.service import AuthzService

        policy = self.settings.policy
        last_good = self.settings.var_dir / "policy-last-good"
        return AuthzService(
            domains=tuple(policy.domains),
            load=partial(load_policy_dir, policy.dir),
            directory=SqlDirectoryView(self.engine),
            audit=self.audit,
            clock=self.clock,
            state=SqlPolicyState(self.engine),
            decisions=self.settings.audit.decisions,
            sample_rate=self.settings.audit.sample_rate,
            changes=self.policy_changes.take if policy.watch else None,
            keep=partial(keep_last_good, into=last_good),
            fallback=partial(load_policy_dir, last_good),
            spool=FileDecisionSpool(self.settings.var_dir / "decision-spool"),
        )

    @cached_property
    def policy_changes(self) -> PolicyDirChanges:
        from idhub.adapters.policy_watch import PolicyDirChanges

        return PolicyDirChanges(self.settings.policy.dir)

    def _add_authz_jobs(self) -> None:
        import signal

        # Registered first: the policy is loaded (prepare) before the warm-up listens, so
        # the start-up load is not warmed, only the engines swapped in later.
        self.runtime.add(
            Job(
                name="policy-poll",
                run_once=lambda: self.authz.poll_once(),
                interval=5.0,
                delay=5.0,
                prepare=lambda: self.authz.load_for_serving(),
            )
        )
        self.runtime.add(
            Job(
                name="policy-warm",
                run_once=lambda: self.authz.warm_once(),
                interval=None,
                wake_on=lambda listener: self.authz.on_swapped(listener),
            )
        )
        if self.settings.policy.watch:
            self.runtime.add(
                Job(
                    name="policy-watch",
                    run_once=lambda: self.authz.check_files_once(),
                    interval=0.5,
                    retry=1.0,
                    finish=lambda: self.policy_changes.close(),
                )
            )
        # SIGHUP reloads the policy: the handler only wakes this job.
        self.runtime.add(
            Job(
                name="policy-reload",
                run_once=lambda: self.authz.reload(trigger="SIGHUP"),
                interval=None,
            )
        )
        if hasattr(signal, "SIGHUP"):
            self.runtime.on_signal(signal.SIGHUP, "policy-reload")

    def _authz_ready(self) -> str:
        return self.authz.readiness() if "authz" in self.__dict__ else "not started"

    # --- directory sync --------------------------------------------------------------------------

    @cached_property
    def directory_store(self) -> SqlDirectoryStore:
        from idhub.adapters.directory_store import SqlDirectoryStore

        return SqlDirectoryStore(self.engine, self.clock)

    @cached_property
    def link_admin(self) -> LinkAdmin:
        """An admin's links and unlinks of people across sources (`idhub user link`)."""
        from idhub.adapters.link_store import SqlLinkStore
        from idhub.core.directory.link_admin import LinkAdmin

        return LinkAdmin(SqlLinkStore(self.engine, self.clock), self.unit_of_work)

    @cached_property
    def local_departments(self) -> LocalDepartments:
        """Departments an admin keeps by hand (`idhub department ...`)."""
        from idhub.adapters.directory_admin_store import SqlDirectoryAdminStore
        from idhub.core.directory.local_departments import LocalDepartments

        return LocalDepartments(
            SqlDirectoryAdminStore(self.engine, self.clock),
            counter=self.directory_store,
            uow=self.unit_of_work,
        )

    @cached_property
    def local_groups(self) -> LocalGroups:
        """Groups an admin keeps by hand (`idhub group ...`)."""
        from idhub.adapters.directory_admin_store import SqlDirectoryAdminStore
        from idhub.core.directory.local_groups import LocalGroups

        return LocalGroups(
            SqlDirectoryAdminStore(self.engine, self.clock),
            counter=self.directory_store,
            uow=self.unit_of_work,
        )

    def directory_sync(self, name: str) -> DirectorySync:
        """A sync runner for `[directory.ldap.<name>]` (a fresh LDAP connection per runner)."""
        from idhub.adapters.directory_store import lease_owner
        from idhub.core.authz.sod_sync import SyncDutyReviewer
        from idhub.core.directory.sync import DirectorySync

        directory = self.ldap_directory(name)  # raises NotFound naming the configured sources
        source = self.settings.ldap_sources[name]
        ratio = source.max_disable_ratio
        return DirectorySync(
            source_name=source.source,
            directory=directory,
            store=self.directory_store,
            audit=self.audit,
            clock=self.clock,
            logout=self.logout,
            max_disable_ratio=self.settings.sync.max_disable_ratio if ratio is None else ratio,
            change_mark="usn" if source.change_mark == "usn" else "timestamp",
            membership=source.membership,
            id_check_interval=source.id_check_interval,
            owner=lease_owner(),
            batch_size=source.batch_size,
            clock_skew=source.clock_skew,
            # Segregation of duties: a change adding a blocking violation is held back.
            duties=SyncDutyReviewer(
                lambda: self.authz.engine,
                now=self.clock.now,
                refresh=lambda: self.authz.refresh_directory(),
            ),
            uow=self.unit_of_work,
            linking=self.settings.identity,
        )

    def oa_sync(self, source: str) -> DirectorySync:
        """A sync runner for an OA source, "dingtalk:<name>" or "wecom:<name>"."""
        from idhub.adapters.directory_store import lease_owner
        from idhub.core.authz.sod_sync import SyncDutyReviewer
        from idhub.core.directory.sync import DirectorySync

        settings = self.oa_source(source)
        ratio = settings.max_disable_ratio
        return DirectorySync(
            source_name=settings.source,
            directory=self.oa_directory(source),
            store=self.directory_store,
            audit=self.audit,
            clock=self.clock,
            logout=self.logout,
            max_disable_ratio=self.settings.sync.max_disable_ratio if ratio is None else ratio,
            change_mark="timestamp",  # unused: OA sources are read whole every run
            membership="member",
            id_check_interval=0,
            owner=lease_owner(),
            batch_size=settings.batch_size,
            duties=SyncDutyReviewer(
                lambda: self.authz.engine,
                now=self.clock.now,
                refresh=lambda: self.authz.refresh_directory(),
            ),
            uow=self.unit_of_work,
            linking=self.settings.identity,
        )

    def oa_source(self, source: str) -> OaSourceSettings:
        from idhub.errors import NotFound

        found = self.settings.oa_sources.get(source)
        if found is None:
            kind = source.partition(":")[0]
            known = ", ".join(
                sorted(s.name for s in self.settings.oa_sources.values() if s.kind == kind)
            )
            name = source.partition(":")[2]
            raise NotFound(f"no {kind} source named {name!r} (known: {known or 'none configured'})")
        return found

    def oa_directory(self, source: str) -> DirectorySource:
        """A fresh client of an OA source's server API; the caller closes it."""
        settings = self.oa_source(source)
        if settings.kind == "wecom":
            from idhub.adapters.wecom import WeComDirectory

            return WeComDirectory(settings)
        from idhub.adapters.dingtalk import DingTalkDirectory

        return DingTalkDirectory(settings)

    # --- upstream sign-in (DingTalk, WeCom; other upstream providers are appended) ---------

    @cached_property
    def upstream_accounts(self) -> AccountsByProvider:
        """provider name -> how its identities are found among idhub's users; a provider
        appended to `upstream_providers` registers its finder here (`add`)."""
        from idhub.core.upstream_flow import AccountsByProvider

        return AccountsByProvider()

    @cached_property
    def upstream_providers(self) -> list[UpstreamProvider]:
        """The sign-in buttons, in configuration order: every DingTalk / WeCom source with
        `sign_in = true`, then every `[upstream.<name>]` OpenID Connect provider."""
        from idhub.adapters.upstream_accounts import SourceKey, SqlSourceAccounts
        from idhub.adapters.upstream_dingtalk import DingTalkSignIn
        from idhub.adapters.upstream_oidc import build_oidc_accounts, build_oidc_providers
        from idhub.adapters.upstream_wecom import WeComSignIn

        providers: list[UpstreamProvider] = []
        for settings in self.settings.oa_sources.values():
            if not settings.sign_in:
                continue
            provider: UpstreamProvider
            if settings.kind == "wecom":
                provider, key = WeComSignIn(settings), SourceKey(settings.source)
            else:
                provider, key = DingTalkSignIn(settings), SourceKey(settings.source, "unionid")
            providers.append(provider)
            self.upstream_accounts.add(provider.name, SqlSourceAccounts(self.engine, key))
        # `[upstream.<name>]` tables of kind "oidc" share one account mapping (by claim).
        oidc_accounts = build_oidc_accounts(self.settings, self.identity)
        for oidc in build_oidc_providers(self.settings):
            providers.append(oidc)
            self.upstream_accounts.add(oidc.name, oidc_accounts)
        return providers

    @cached_property
    def upstream(self) -> UpstreamSignIn:
        """The upstream sign-in flow (core/upstream_flow.py)."""
        from idhub.adapters.upstream_states import SqlUpstreamStates
        from idhub.core.crypto import KeyedHasher
        from idhub.core.upstream_flow import UpstreamSignIn
        from idhub.errors import ConfigError

        providers = self.upstream_providers
        names = [p.name for p in providers]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ConfigError(f"two upstream sign-in providers are named {doubled[0]!r}")
        return UpstreamSignIn(
            providers=providers,
            accounts=self.upstream_accounts,
            states=SqlUpstreamStates(self.engine),
            signin=self.signin,
            hasher=KeyedHasher(self.settings.require_secret_key(), "upstream-state"),
            audit=self.audit,
            clock=self.clock,
            uow=self.unit_of_work,
        )

    @cached_property
    def password_verifiers(self) -> dict[str, PasswordVerifier]:
        """source -> verifier for users whose password lives elsewhere (contract 6)."""
        from idhub.adapters.ldap_auth import LdapBindVerifier

        return {s.source: LdapBindVerifier(s) for s in self.settings.ldap_sources.values()}

    @cached_property
    def sync_scheduler(self) -> SyncScheduler:
        from idhub.core.directory.scheduler import SyncScheduler

        def run(name: str, full: bool) -> object:
            # Timed here, around the whole run, for the sync metrics (core/metrics.py).
            started = time.perf_counter()
            label = name if ":" in name else f"ldap:{name}"
            status = "failed"
            try:
                # OA sources are scheduled by their full name ("dingtalk:corp"), LDAP by name.
                runner = self.oa_sync(name) if ":" in name else self.directory_sync(name)
                report = runner.run(full=full)
                status = report.status
                count_sync_run(self.metrics, label, status, report.counts)
                return report
            except Exception:
                if status == "failed":
                    count_sync_run(self.metrics, label, status, {})
                raise
            finally:
                self.metrics.observe(
                    "idhub_sync_duration_seconds", time.perf_counter() - started, label
                )

        def last_full_at(name: str) -> float | None:
            source = name if ":" in name else f"ldap:{name}"
            return self.directory_store.state(source).last_full_at

        return SyncScheduler(
            sources=sorted(self.settings.ldap_sources) + sorted(self.settings.oa_sources),
            run=run,
            last_full_at=last_full_at,
            clock=self.clock,
            interval=self.settings.sync.interval,
            full_interval=self.settings.sync.full_interval,
            stopping=lambda: self.runtime.check_stopping("directory-sync"),
        )

    def _add_sync_job(self) -> None:
        # The same floor the scheduler applies; a short pause first so start-up (migrations,
        # key loading) is not slowed down.
        interval = max(1.0, self.settings.sync.interval)
        self.runtime.add(
            Job(
                name="directory-sync",
                run_once=lambda: self.sync_scheduler.run_due(),
                interval=interval,
                delay=min(5.0, interval),
                finish=self._close_password_verifiers,
            )
        )

    def _close_password_verifiers(self) -> None:
        if "password_verifiers" in self.__dict__:
            for verifier in self.password_verifiers.values():
                close = getattr(verifier, "close", None)
                if close is not None:
                    close()

    # --- admin tools: what the CLI reads and runs beyond the services above -----------------

    @cached_property
    def audit_archives(self) -> AuditArchives:
        """Moves old events into archive files under VAR/audit-archive and checks such files."""
        from idhub.adapters.audit_archive import AuditArchives

        return AuditArchives(
            self.audit_log, directory=self.settings.var_dir / "audit-archive", clock=self.clock
        )

    def audit_sink_file_check(self, path: Path) -> SinkFileReport:
        """A JSON-lines sink file checked line by line against the live chain."""
        from idhub.adapters.audit_sink_check import verify_sink_file

        return verify_sink_file(self.audit_log, path)

    @cached_property
    def policy_files(self) -> PolicyFiles:
        """Reads policy directories, and git revisions of them, for `idhub policy`."""
        from idhub.adapters.policy_files import PolicyFiles

        return PolicyFiles()

    @cached_property
    def directory_view(self) -> DirectoryReader:
        """The directory as the policy sees it (users, departments, groups) from the database."""
        from idhub.adapters.directory_view import SqlDirectoryView

        return SqlDirectoryView(self.engine)

    @cached_property
    def logout_deliveries(self) -> SqlDeliveryStore:
        """The back-channel logout queue, for `idhub session deliveries`."""
        from idhub.adapters.session_store import SqlDeliveryStore

        return SqlDeliveryStore(self.engine)

    def ldap_directory(self, name: str) -> LdapDirectory:
        """A fresh connection to `[directory.ldap.<name>]`; the caller closes it."""
        from idhub.adapters.ldap import LdapDirectory
        from idhub.errors import NotFound

        source = self.settings.ldap_sources.get(name)
        if source is None:
            known = ", ".join(sorted(self.settings.ldap_sources)) or "none configured"
            raise NotFound(f"no LDAP source named {name!r} (known: {known})")
        return LdapDirectory(source)

    # --- decisions: what the decision and audit APIs ask the policy ----------------------------

    @cached_property
    def decisions(self) -> Decisions:
        from idhub.core.authz.decisions import Decisions

        def exists(kind: str, value: str) -> bool:
            # A `user` that is somebody's sub is looked up too, so the answer can say so.
            identity = self.identity
            if kind == "user" and identity.get_user_by_username(value) is not None:
                return True
            return identity.get_user_by_sub(value) is not None

        # Resolved per request, so building the web app does not build the policy service.
        return Decisions(
            lambda: self.authz, exists=exists, refresh=lambda: self.authz.refresh_directory()
        )

    @cached_property
    def audit_readers(self) -> AuditReaders:
        """Who may read the trail through the audit API (policy for users, admin_clients)."""
        from idhub.core.authz.audit_access import AuditReaders

        return AuditReaders(
            find_user=lambda sub: self.identity.get_user_by_sub(sub),
            decisions=self.decisions,
            admin_clients=self.settings.server.admin_clients,
        )

    # --- health -----------------------------------------------------------------------------------

    def database_ping(self) -> bool:
        """True when the database answers a trivial query (for `/readyz`)."""
        from idhub.adapters.database import check_database_reachable

        return check_database_reachable(self.engine)

    @cached_property
    def health(self) -> Readiness:
        """`/readyz`'s probes, and the last readings for metrics (`health.gauges`: clock
        offset, database reachable, policy degraded, audit sink lag)."""
        from functools import partial

        from idhub.adapters.database import read_database_clock
        from idhub.core.readiness import Readiness

        return Readiness(
            database=partial(read_database_clock, self.engine, self.clock.now),
            checks=self.readiness_checks,
            warnings=self.readiness_warnings,
            clock_warning_after=self.settings.database.clock_offset_warning,
        )

    def database_stalls(self) -> int:
        """Round trips or connects that ran out of time in this process (PostgreSQL)."""
        from idhub.adapters._pg_deadline import stall_guard

        guard = stall_guard(self.engine)
        return guard.stalls if guard is not None else 0

    def _jobs_ready(self) -> str:
        # The audit shipper stopping is a sink problem: a warning, like a sink failing.
        return self.runtime.readiness([n for n in self.runtime.names if n != "audit-sinks"])

    def _keys_ready(self) -> str:
        from idhub.errors import IdhubError

        try:
            return self.keys.readiness()
        except IdhubError as exc:  # no secret key, keys sealed under another one
            return f"signing keys unusable: {exc}"

    def _policy_warnings(self) -> list[str]:
        if "authz" not in self.__dict__:
            return []
        found = []
        degraded = self.authz.degraded()
        self.health.gauges.policy_degraded = degraded is not None
        if degraded is not None:
            found.append(degraded)
        held = self.authz.decision_audit
        if held.held or held.dropped:
            found.append(
                f"decision audit: {held.held} records held until the database is back"
                + (f", {held.dropped} dropped" if held.dropped else "")
            )
        return found

    def _add_decision_audit_job(self) -> None:
        def flush() -> None:
            if "authz" in self.__dict__:
                self.authz.decision_audit.flush_once()

        self.runtime.add(
            Job(name="decision-audit", run_once=flush, interval=1.0, retry=1.0, finish=flush)
        )

    # --- sign-in defences: throttle, client-auth guard, password policy ------------------------

    @cached_property
    def request_budget(self) -> RequestBudget:
        """Writes a request without a session may cause per address (in this process)."""
        from idhub.core.request_budget import BudgetRule, RequestBudget

        d = self.settings.defences
        rule = BudgetRule(
            limit=d.anonymous_writes,
            window=float(d.anonymous_window),
            max_sources=d.anonymous_sources,
        )
        return RequestBudget(rule, clock=self.clock)

    @cached_property
    def failure_audit(self) -> FailureAudit:
        """Failure events of anonymous requests, written within `request_budget`."""
        from idhub.core.failure_audit import FailureAudit

        return FailureAudit(self.audit, self.request_budget)

    def _add_failure_audit_job(self) -> None:
        # Summaries of windows that suppressed events, written soon after the window ends
        # even when the flood stopped, and all of them at shutdown.
        def flush_expired() -> None:
            if "failure_audit" in self.__dict__:
                self.failure_audit.flush_expired()

        def flush_all() -> None:
            if "failure_audit" in self.__dict__:
                self.failure_audit.flush_all()

        def lost() -> list[str]:
            n = self.request_budget.lost() if "request_budget" in self.__dict__ else 0
            return [f"failure audit: {n} audit.suppressed summaries dropped"] if n else []

        self.readiness_warnings.append(lost)
        every = min(10.0, float(self.settings.defences.anonymous_window))
        self.runtime.add(
            Job(
                name="failure-audit",
                run_once=flush_expired,
                interval=every,
                retry=every,
                finish=flush_all,
            )
        )

    @cached_property
    def throttle(self) -> Throttle:
        """Failure counters per address, account and client, shared through the database."""
        from idhub.core.throttle import Throttle, ThrottlePolicy, ThrottleRule

        t = self.settings.throttle

        def rule(free: int, limit: int, lock: int) -> ThrottleRule:
            return ThrottleRule(
                max_failures=limit,
                lock_seconds=lock,
                free_failures=free,
                delay_max=t.delay_max,
                window=t.window,
            )

        policy = ThrottlePolicy(
            ip=rule(t.ip_free, t.ip_limit, t.ip_lock),
            account=rule(t.account_free, t.account_limit, t.account_lock),
            client=rule(t.client_free, t.client_limit, t.client_lock),
            client_ip=rule(t.client_ip_free, t.client_ip_limit, t.client_ip_lock),
        )
        return Throttle(self.throttle_store, policy=policy, clock=self.clock)

    @cached_property
    def throttle_store(self) -> SqlThrottleStore:
        from idhub.adapters.sqlite_readonly import readonly_sqlite
        from idhub.adapters.throttle_store import SqlThrottleStore

        return SqlThrottleStore(self.engine, readonly=readonly_sqlite(self.engine))

    @cached_property
    def client_guard(self) -> ClientAuthGuard:
        from idhub.core.client_guard import ClientAuthGuard

        return ClientAuthGuard(self.throttle, self.audit, self.failure_audit)

    @cached_property
    def local_passwords(self) -> LocalPasswords:
        """The one way a local password is set (policy, common list, history)."""
        from idhub.adapters.password_list import common_passwords
        from idhub.core.password_policy import LocalPasswords, PasswordPolicy

        passwords = self.settings.passwords
        policy = PasswordPolicy(
            min_length=passwords.min_length,
            history=passwords.history,
            common=common_passwords(),
        )
        return LocalPasswords(self.identity, self.password_hasher, policy)

    # --- CAS server front -------------------------------------------------------------------------

    @cached_property
    def cas_services(self) -> CasServiceRegistry:
        from idhub.adapters.cas_store import SqlCasServiceStore
        from idhub.cas.services import CasServiceRegistry

        return CasServiceRegistry(
            SqlCasServiceStore(self.engine), self.audit, self.clock, uow=self.unit_of_work
        )

    @cached_property
    def cas_tickets(self) -> CasTickets:
        from idhub.adapters.cas_store import SqlCasTicketStore
        from idhub.cas.tickets import CasTickets
        from idhub.core.crypto import Sealer

        return CasTickets(
            SqlCasTicketStore(self.engine, self.audit_log),
            Sealer(self.settings.require_secret_key(), "cas-tickets"),
            ttl=self.settings.cas.ticket_ttl,
            # Service tickets stay (encrypted) while their session may live, for single logout.
            keep_for=self.settings.tokens.session_ttl + 3600,
        )

    @cached_property
    def cas(self) -> CasServer:
        from idhub.adapters.cas_callback import HttpProxyCallback
        from idhub.cas.attributes import AttributeRelease
        from idhub.cas.server import CasServer, check_loopback_http

        issuer = self.settings.server.issuer
        return CasServer(
            registry=self.cas_services,
            tickets=self.cas_tickets,
            users=self.identity,
            sessions=self.sessions,
            attributes=AttributeRelease(
                groups=self.identity.user_groups,
                roles=lambda: self.authz,
                domains=tuple(self.settings.policy.domains),
            ),
            callback=HttpProxyCallback(),
            audit=self.audit,
            clock=self.clock,
            # Development: idhub itself on loopback http may call back proxies on loopback http.
            allow_http_loopback=issuer.startswith("http://") and check_loopback_http(issuer),
            failures=self.failure_audit,
        )

    def _add_cas_housekeeping_job(self) -> None:
        # Off the login path (it used to run inside a ticket issue once an hour); like
        # token-housekeeping it waits a full interval first.
        self.runtime.add(
            Job(
                name="cas-housekeeping",
                run_once=lambda: self.cas_tickets.purge_once(self.clock.now()),
                interval=600.0,
                delay=600.0,
                retry=30.0,
            )
        )

    def _register_cas_logout(self, logout: LogoutService) -> None:
        from idhub.adapters.session_store import SqlDeliveryStore
        from idhub.cas.logout import PROTOCOL, CasLogoutQueue, CasLogoutRequests

        notifier = CasLogoutQueue(
            services=lambda: self.cas_services,
            tickets=lambda: self.cas_tickets,
            deliveries=SqlDeliveryStore(self.engine),
            enabled=self.settings.cas.single_logout,
        )
        builder = CasLogoutRequests(lambda: self.cas_tickets, self.clock)
        logout.register_notifier(PROTOCOL, notifier, builder=builder)

    # --- second factors: TOTP, recovery codes, passkeys, remembered devices ------------------

    @cached_property
    def mfa_store(self) -> SqlMfaStore:
        from idhub.adapters.mfa_store import SqlMfaStore

        return SqlMfaStore(self.engine)

    @cached_property
    def mfa(self) -> SecondFactors:
        from idhub.core.crypto import KeyedHasher, Sealer
        from idhub.core.mfa import SecondFactors

        secret = self.settings.require_secret_key()
        return SecondFactors(
            self.mfa_store,
            sealer=Sealer(secret, "mfa-at-rest"),
            recovery_hasher=KeyedHasher(secret, "mfa-recovery-code"),
            audit=self.audit,
            clock=self.clock,
            issuer_name=self.settings.mfa.totp_issuer,
            uow=self.unit_of_work,
        )

    @cached_property
    def passkeys(self) -> Passkeys:
        from idhub.core.passkeys import Passkeys

        return Passkeys(
            self.mfa_store,
            issuer=self.settings.server.issuer,
            rp_name=self.settings.mfa.totp_issuer,
            audit=self.audit,
            clock=self.clock,
            uow=self.unit_of_work,
        )

    @cached_property
    def remembered_devices(self) -> RememberedDevices:
        from idhub.core.crypto import KeyedHasher
        from idhub.core.remembered_devices import RememberedDevices

        return RememberedDevices(
            self.mfa_store,
            signer=KeyedHasher(self.settings.require_secret_key(), "remembered-device"),
            audit=self.audit,
            clock=self.clock,
            ttl=self.settings.mfa.remember_device_days * 86400,
            uow=self.unit_of_work,
        )

    @cached_property
    def signin_factors(self) -> SignInFactors:
        from idhub.core.assurance import MfaRequirements
        from idhub.core.crypto import KeyedHasher
        from idhub.core.pending_logins import PendingLogins
        from idhub.core.signin import SignInFactors

        def system_requires(client_id: str, protocol: str) -> bool:
            # Each front's own registry: a CAS service and an OIDC client may share a name.
            if protocol == "cas":
                service = self.cas_services.named(client_id)
                return service is not None and service.require_mfa
            if protocol == "saml":
                sp = self.saml_sps.get(client_id)
                return sp is not None and sp.require_mfa
            client = self.clients.get(client_id)
            return client is not None and client.require_mfa

        return SignInFactors(
            requirements=MfaRequirements(
                mode=self.settings.mfa.required,
                flagged=self.mfa.check_flagged,
                rules=self._mfa_role_rules,
                roles=_LazyRoles(lambda: self.authz),
                domains=tuple(self.settings.policy.domains),
            ),
            factors=self.mfa,
            passkeys=self.passkeys,
            devices=self.remembered_devices,
            pending=PendingLogins(KeyedHasher(self.settings.require_secret_key(), "mfa-pending")),
            system_requires=system_requires,
        )

    def _mfa_role_rules(self) -> tuple[MfaRoleRule, ...]:
        from idhub.errors import PolicyError

        try:
            return self.authz.engine.policy.mfa_roles
        except PolicyError:
            # No policy at all: nothing is derived from roles (they grant nothing either).
            return ()

    # --- saml identity provider ----------------------------------------------------------------

    @cached_property
    def saml_sps(self) -> SpRegistry:
        from idhub.adapters.saml_store import SqlSpStore
        from idhub.saml.registry import SpRegistry

        return SpRegistry(
            SqlSpStore(self.engine), self.audit, clock=self.clock, uow=self.unit_of_work
        )

    @cached_property
    def saml_keys(self) -> SamlKeys:
        from urllib.parse import urlsplit

        from idhub.adapters.saml_store import SqlSamlCertificates
        from idhub.saml.keys import SamlKeys

        return SamlKeys(
            self.keys,
            SqlSamlCertificates(self.engine),
            clock=self.clock,
            common_name=urlsplit(self.settings.server.issuer).hostname or "idhub",
            days=self.settings.saml.certificate_days,
        )

    @cached_property
    def saml_idp(self) -> IdentityProvider:
        from idhub.adapters.saml_store import SqlMessageIds
        from idhub.saml.idp import IdentityProvider, IdpSettings

        saml = self.settings.saml
        issuer = self.settings.server.issuer
        return IdentityProvider(
            IdpSettings(
                entity_id=saml.entity_id_for(issuer),
                base_url=issuer,
                assertion_ttl=saml.assertion_ttl,
                request_max_age=saml.request_max_age,
                require_signed_requests=saml.require_signed_requests,
            ),
            registry=self.saml_sps,
            keys=self.saml_keys,
            message_ids=SqlMessageIds(self.engine),
            clock=self.clock,
        )

    @cached_property
    def saml_pending(self) -> PendingRequests:
        from idhub.core.crypto import KeyedHasher
        from idhub.saml.requests import PendingRequests

        return PendingRequests(KeyedHasher(self.settings.require_secret_key(), "saml-pending"))

    def saml_opaque(self, value: str) -> str:
        """Persistent NameIDs and SessionIndexes: keyed so SPs cannot correlate people."""
        from idhub.core.crypto import KeyedHasher

        return KeyedHasher(self.settings.require_secret_key(), "saml-subject").hash(value)

    def _register_saml_logout(self, service: LogoutService) -> None:
        from idhub.adapters.saml_store import HttpSamlLogoutChannel
        from idhub.adapters.session_store import SqlDeliveryStore
        from idhub.saml.logout import PROTOCOL, SamlLogoutNotifier, SamlLogoutSender

        service.register_notifier(
            PROTOCOL,
            SamlLogoutNotifier(lambda: self.saml_sps, SqlDeliveryStore(self.engine)),
            sender=SamlLogoutSender(
                registry=lambda: self.saml_sps,
                idp=lambda: self.saml_idp,
                users=self.identity,
                channel=HttpSamlLogoutChannel(),
                opaque=self.saml_opaque,
            ),
        )

    # --- SCIM 2.0 service provider (docs/scim.md) --------------------------------------------

    @cached_property
    def scim(self) -> ScimService:
        import uuid

        from idhub.adapters.scim_store import SqlScimStore
        from idhub.core.scim.service import ScimService

        return ScimService(
            SqlScimStore(self.engine, self.clock, self.identity),
            self.unit_of_work,
            {name: s.token_sha256 for name, s in self.settings.scim_sources.items()},
            new_id=lambda: str(uuid.uuid4()),
            sessions=self.logout,
            linking=self.settings.identity,
        )


class _LazyRoles:
    """The policy's roles, resolved at the first question rather than at wiring."""

    def __init__(self, authz: Callable[[], AuthzService]) -> None:
        self._authz = authz

    def roles_for(self, user: User, domain: str) -> list[str]:
        return self._authz().roles_for(user, domain)

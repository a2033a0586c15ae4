"""The composition root: the only place that knows which adapter implements which port.

`Services` builds each part on first use, so a CLI command touching only the audit log
does not load signing keys or policies. The web app builds what it serves at start-up.
Each area keeps its wiring in its own block below.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.config import Settings
from idhub.core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from idhub.adapters.audit_sinks import AuditShipper
    from idhub.adapters.audit_store import SqlAuditLog
    from idhub.adapters.directory_store import SqlDirectoryStore
    from idhub.adapters.identity_store import SqlIdentityStore
    from idhub.adapters.logout_delivery import DeliveryWorker
    from idhub.adapters.session_store import SqlSessionStore
    from idhub.adapters.token_store import SqlTokenStore
    from idhub.core.audit import Auditor
    from idhub.core.authenticator import Authenticator
    from idhub.core.authz.service import AuthzService
    from idhub.core.clients import ClientRegistry
    from idhub.core.consent import Consents
    from idhub.core.directory.scheduler import SyncScheduler
    from idhub.core.directory.sync import DirectorySync
    from idhub.core.identity import PasswordVerifier
    from idhub.core.logout import LogoutService
    from idhub.core.passwords import PasswordHasher
    from idhub.core.sessions import SsoSessions
    from idhub.core.signin import SignInCore
    from idhub.oidc.grants import Issuer
    from idhub.oidc.housekeeping import TokenHousekeeping
    from idhub.oidc.introspection import TokensRevoker
    from idhub.oidc.keys import KeyStore
    from idhub.oidc.server import Provider
    from idhub.oidc.tokens import AccessTokens, IdTokens
    from idhub.saml.idp import IdentityProvider
    from idhub.saml.keys import SamlKeys
    from idhub.saml.registry import SpRegistry
    from idhub.saml.requests import PendingRequests


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
        # Run by the web app's lifespan (start background workers / stop them); must be quick.
        self.startup_hooks: list[Callable[[], None]] = []
        self.shutdown_hooks: list[Callable[[], None]] = []
        # name -> probe returning "ok" or a short reason, shown by /readyz.
        self.readiness_checks: dict[str, Callable[[], str]] = {}
        self._register_hooks()

    def _register_hooks(self) -> None:
        # --- oidc hooks (keys on init, demo clients) ---
        self.init_steps.append(self._ensure_signing_keys)
        self.startup_hooks.append(self._start_token_housekeeping)
        self.shutdown_hooks.append(self._stop_token_housekeeping)
        # --- sessions/login hooks (demo users, logout delivery worker) ---
        self.demo_steps.append(self._seed_demo)
        self.startup_hooks.append(self._start_logout_worker)
        self.shutdown_hooks.append(self._stop_logout_worker)
        self.readiness_checks["logout_delivery"] = self._logout_delivery_ready
        # --- authorization hooks (policy load/watch, readiness) ---
        self.startup_hooks.append(self._start_authz)
        self.shutdown_hooks.append(self._stop_authz)
        self.readiness_checks["policy"] = self._authz_ready
        # --- directory sync hooks (scheduler) ---
        self.startup_hooks.append(self._start_sync_scheduler)
        self.shutdown_hooks.append(self._stop_sync_scheduler)
        # --- audit hooks (sinks) ---
        if self.settings.audit.jsonl_path is not None or self.settings.audit.syslog:
            self.startup_hooks.append(self._start_audit_sinks)
            self.shutdown_hooks.append(self._stop_audit_sinks)
            self.readiness_checks["audit_sinks"] = self._audit_sinks_ready
        pass

    @cached_property
    def engine(self) -> Engine:
        return self._engine or create_db_engine(self.settings.database)

    def migrate(self) -> None:
        apply_migrations(self.engine)

    def close(self) -> None:
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

    @cached_property
    def audit_shipper(self) -> AuditShipper | None:
        """Streams the trail to the configured JSON-lines file / syslog (None if neither)."""
        from idhub.adapters.audit_sinks import build_shipper

        return build_shipper(self.audit_log, self.settings)

    def _start_audit_sinks(self) -> None:
        if self.audit_shipper is not None:
            self.audit_shipper.start()

    def _stop_audit_sinks(self) -> None:
        if self.audit_shipper is not None:
            self.audit_shipper.stop()

    def _audit_sinks_ready(self) -> str:
        return "ok" if self.audit_shipper is None else self.audit_shipper.readiness()

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
            self.token_store,
            issuer=self.settings.server.issuer,
            clock=self.clock,
            ttl=self.settings.tokens.access_token_ttl,
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
    def token_issuer(self) -> Issuer:
        from idhub.core.crypto import KeyedHasher
        from idhub.oidc.grants import Issuer

        return Issuer(
            access_tokens=self.access_tokens,
            id_tokens=self.id_tokens,
            store=self.token_store,
            identity=self.identity,
            audit=self.audit,
            clock=self.clock,
            refresh_hasher=KeyedHasher(self.settings.require_secret_key(), "refresh-token"),
            refresh_ttl=self.settings.tokens.refresh_token_ttl,
            domains=tuple(self.settings.policy.domains),
            # Resolved at the first token, not when the issuer is built.
            roles=lambda: self.authz,
        )

    @cached_property
    def oidc(self) -> Provider:
        from idhub.oidc.client_auth import PrivateKeyJWT
        from idhub.oidc.introspection import TokenEndpoints
        from idhub.oidc.server import Provider

        issuer_url = self.settings.server.issuer.rstrip("/")
        endpoints = TokenEndpoints(self.token_issuer)
        return Provider(
            issuer_url=self.settings.server.issuer,
            registry=self.clients,
            issuer=self.token_issuer,
            code_ttl=self.settings.tokens.code_ttl,
            assertion_auth=PrivateKeyJWT(
                self.token_store,
                clock=self.clock,
                audiences=lambda: [issuer_url + "/token", issuer_url, issuer_url + "/"],
            ),
            userinfo=endpoints.userinfo,
            introspect=endpoints.introspect,
            revoke=endpoints.revoke,
        )

    @cached_property
    def tokens_revoker(self) -> TokensRevoker:
        from idhub.oidc.introspection import TokensRevoker

        return TokensRevoker(self.token_issuer)

    def _ensure_signing_keys(self, echo: Callable[[str], None]) -> None:
        self.keys.ensure_active(echo)

    @cached_property
    def token_housekeeping(self) -> TokenHousekeeping:
        from idhub.oidc.housekeeping import TokenHousekeeping

        return TokenHousekeeping(self.token_store, self.clock)

    def _start_token_housekeeping(self) -> None:
        self.token_housekeeping.start()

    def _stop_token_housekeeping(self) -> None:
        if "token_housekeeping" in self.__dict__:
            self.token_housekeeping.stop()

    # --- sessions, login, logout ---------------------------------------------------------------

    @cached_property
    def password_hasher(self) -> PasswordHasher:
        from idhub.core.passwords import PasswordHasher

        return PasswordHasher()

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

        return Consents(self.session_store, self.audit, self.clock)

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
            fingerprint=KeyedHasher(self.settings.require_secret_key(), "typed-username").hash,
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
        )
        self._register_saml_logout(service)
        return service

    @cached_property
    def logout_worker(self) -> DeliveryWorker:
        from idhub.adapters.logout_delivery import DeliveryWorker
        from idhub.adapters.session_store import SqlDeliveryStore

        deliveries = SqlDeliveryStore(self.engine)

        def housekeeping() -> None:
            # Ended sessions are kept a week (support questions), delivered logouts 30 days,
            # failed ones 90 days; then they are removed.
            now = self.clock.now()
            self.session_store.purge_ended(now - 7 * 86400)
            deliveries.purge(delivered_before=now - 30 * 86400, failed_before=now - 90 * 86400)

        return DeliveryWorker(self.logout, housekeeping=housekeeping)

    def _start_logout_worker(self) -> None:
        self.logout_worker.start()

    def _logout_delivery_ready(self) -> str:
        if "logout_worker" not in self.__dict__ or self.logout_worker.running:
            return "ok"
        return "back-channel logout worker stopped"

    def _stop_logout_worker(self) -> None:
        if "logout_worker" in self.__dict__:
            self.logout_worker.stop()

    def _seed_demo(self, echo: Callable[[str], None]) -> None:
        from idhub.cli.demo import seed_demo

        seed_demo(self, echo)

    # --- authorization -------------------------------------------------------------------------

    @cached_property
    def authz(self) -> AuthzService:
        from functools import partial

        from idhub.adapters.directory_view import SqlDirectoryView
        from idhub.adapters.policy_files import keep_last_good, load_policy_dir, watch_policy_dir
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
            watch=partial(watch_policy_dir, policy.dir) if policy.watch else None,
            keep=partial(keep_last_good, into=last_good),
            fallback=partial(load_policy_dir, last_good),
        )

    def _start_authz(self) -> None:
        self.authz.start()

    def _stop_authz(self) -> None:
        if "authz" in self.__dict__:
            self.authz.stop()

    def _authz_ready(self) -> str:
        return self.authz.readiness() if "authz" in self.__dict__ else "not started"

    # --- directory sync --------------------------------------------------------------------------

    @cached_property
    def directory_store(self) -> SqlDirectoryStore:
        from idhub.adapters.directory_store import SqlDirectoryStore

        return SqlDirectoryStore(self.engine, self.clock)

    def directory_sync(self, name: str) -> DirectorySync:
        """A sync runner for `[directory.ldap.<name>]` (a fresh LDAP connection per runner)."""
        from idhub.adapters.directory_store import lease_owner
        from idhub.adapters.ldap import LdapDirectory
        from idhub.core.directory.sync import DirectorySync
        from idhub.errors import NotFound

        source = self.settings.ldap_sources.get(name)
        if source is None:
            known = ", ".join(sorted(self.settings.ldap_sources)) or "none configured"
            raise NotFound(f"no LDAP source named {name!r} (known: {known})")
        ratio = source.max_disable_ratio
        return DirectorySync(
            source_name=source.source,
            directory=LdapDirectory(source),
            store=self.directory_store,
            audit=self.audit,
            clock=self.clock,
            logout=self.logout if hasattr(type(self), "logout") else None,
            max_disable_ratio=self.settings.sync.max_disable_ratio if ratio is None else ratio,
            change_mark="usn" if source.change_mark == "usn" else "timestamp",
            membership=source.membership,
            id_check_interval=source.id_check_interval,
            owner=lease_owner(),
            batch_size=source.batch_size,
            clock_skew=source.clock_skew,
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
            return self.directory_sync(name).run(full=full)

        def last_full_at(name: str) -> float | None:
            return self.directory_store.state(f"ldap:{name}").last_full_at

        return SyncScheduler(
            sources=sorted(self.settings.ldap_sources),
            run=run,
            last_full_at=last_full_at,
            clock=self.clock,
            interval=self.settings.sync.interval,
            full_interval=self.settings.sync.full_interval,
        )

    def _start_sync_scheduler(self) -> None:
        if self.settings.ldap_sources:
            self.sync_scheduler.start()

    def _stop_sync_scheduler(self) -> None:
        if "sync_scheduler" in self.__dict__:
            self.sync_scheduler.stop()
        if "password_verifiers" in self.__dict__:
            for verifier in self.password_verifiers.values():
                close = getattr(verifier, "close", None)
                if close is not None:
                    close()

    # --- saml identity provider ----------------------------------------------------------------

    @cached_property
    def saml_sps(self) -> SpRegistry:
        from idhub.adapters.saml_store import SqlSpStore
        from idhub.saml.registry import SpRegistry

        return SpRegistry(SqlSpStore(self.engine), self.audit, clock=self.clock)

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

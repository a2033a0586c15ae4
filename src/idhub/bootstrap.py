"""The composition root: the only place that knows which adapter implements which port.

`Services` builds each part on first use, so a CLI command touching only the audit log
does not load signing keys or policies. The web app builds what it serves at start-up.
Each area keeps its wiring in its own block below.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.config import Settings
from idhub.core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from idhub.adapters.logout_delivery import DeliveryWorker
    from idhub.adapters.session_store import SqlSessionStore
    from idhub.core.authenticator import Authenticator
    from idhub.core.logout import LogoutService
    from idhub.core.passwords import PasswordHasher
    from idhub.core.sessions import SsoSessions
    from idhub.adapters.audit_store import SqlAuditLog
    from idhub.adapters.identity_store import SqlIdentityStore
    from idhub.core.audit import Auditor


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
        # --- sessions/login hooks (demo users, logout delivery worker) ---
        self.demo_steps.append(self._seed_demo)
        self.startup_hooks.append(self._start_logout_worker)
        self.shutdown_hooks.append(self._stop_logout_worker)
        # --- authorization hooks (policy load/watch, readiness) ---
        # --- directory sync hooks (scheduler) ---
        # --- audit hooks (sinks) ---
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

    # --- identity / directory store ----------------------------------------------------------

    @cached_property
    def identity(self) -> SqlIdentityStore:
        from idhub.adapters.identity_store import SqlIdentityStore

        return SqlIdentityStore(self.engine, self.clock)

    # --- oidc: keys, clients, tokens ---------------------------------------------------------

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
    def authenticator(self) -> Authenticator:
        from idhub.core.authenticator import Authenticator
        from idhub.core.passwords import LocalPasswordVerifier

        def verifier_for(source: str) -> Any:
            # Filled by the directory area (contract 6); absent until a directory is configured.
            return dict(getattr(self, "password_verifiers", None) or {}).get(source)

        return Authenticator(
            users=self.identity,
            local_verifier=LocalPasswordVerifier(self.identity, self.password_hasher),
            verifier_for=verifier_for,
            hasher=self.password_hasher,
            audit=self.audit,
            clock=self.clock,
        )

    @cached_property
    def logout(self) -> LogoutService:
        from idhub.adapters.logout_delivery import HttpLogoutChannel
        from idhub.adapters.session_store import SqlDeliveryStore
        from idhub.core.logout import LogoutService

        return LogoutService(
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

    @cached_property
    def logout_worker(self) -> DeliveryWorker:
        from idhub.adapters.logout_delivery import DeliveryWorker

        return DeliveryWorker(self.logout)

    def _start_logout_worker(self) -> None:
        self.logout_worker.start()

    def _stop_logout_worker(self) -> None:
        if "logout_worker" in self.__dict__:
            self.logout_worker.stop()

    def _seed_demo(self, echo: Callable[[str], None]) -> None:
        from idhub.cli.demo import seed_demo

        seed_demo(self, echo)

    # --- authorization -------------------------------------------------------------------------

    # --- directory sync --------------------------------------------------------------------------

"""Shared fixtures: real databases (an SQLite file and the local PostgreSQL), settings,
services, the app served by a real uvicorn on a free port, and the CLI run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.bootstrap import Services
from idhub.config import DatabaseSettings, Settings, load_settings
from tests.db_reset import empty_postgres

if TYPE_CHECKING:
    from tests.dingtalk_fake import DingTalkFake
    from tests.wecom_fake import WeComFake

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TEST_SECRET_KEY = "test-secret-key-0123456789abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ databases


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "idhub.db"
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{path}"))
    apply_migrations(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, migrated once."""
    name = f"idhub_test_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure here means no usable PostgreSQL
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed for the suite: {exc}")
    url = f"{PG_SERVER}/{name}"
    engine = create_db_engine(DatabaseSettings(url=url))
    apply_migrations(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_reset_engine(pg_database: str) -> Iterator[Engine]:
    """Empties the session database before each PostgreSQL test. No pooling: between tests
    nothing of the suite's own stays connected, as tests counting connections expect."""
    engine = create_engine(pg_database, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: every test that takes it runs on both backends."""
    if request.param == "sqlite":
        return sqlite_url_for(request, tmp_path)
    url: str = request.getfixturevalue("pg_database")
    empty_postgres(request.getfixturevalue("pg_reset_engine"))
    return url


@pytest.fixture
def sqlite_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated SQLite database, for tests whose subject is not the storage."""
    return sqlite_url_for(request, tmp_path)


def sqlite_url_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "idhub.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


# ------------------------------------------------------------------ settings and services


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Builds Settings the way a deployment would: an idhub.toml plus IDHUB_* variables."""

    def factory(
        db_url: str,
        *,
        issuer: str = "http://127.0.0.1:8000",
        toml: str = "",
        env: dict[str, str] | None = None,
    ) -> Settings:
        config = tmp_path / "idhub.toml"
        config.write_text(toml, encoding="utf-8")
        variables = {
            "IDHUB_DATABASE_URL": db_url,
            "IDHUB_ISSUER": issuer,
            "IDHUB_SECRET_KEY": TEST_SECRET_KEY,
            "IDHUB_VAR_DIR": str(tmp_path / "var"),
            "IDHUB_POLICY_DIR": str(REPO / "policies"),
        }
        variables.update(env or {})
        return load_settings(config, env=variables, cwd=tmp_path)

    return factory


@pytest.fixture
def make_services() -> Iterator[Callable[..., Services]]:
    made: list[Services] = []

    def factory(settings: Settings, **kwargs: Any) -> Services:
        services = Services(settings, **kwargs)
        made.append(services)
        return services

    yield factory
    for services in made:
        services.close()


@pytest.fixture
def services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    return make_services(make_settings(db_url))


# ------------------------------------------------------------------ a real server


@dataclass
class LiveServer:
    url: str
    services: Services

    @property
    def settings(self) -> Settings:
        return self.services.settings


class _ThreadedServer(uvicorn.Server):
    """uvicorn in a thread. Its main loop looks at `should_exit` every 0.1 s and its shutdown
    first sleeps 0.1 s; `stop` wakes the loop, and the shutdown ends as soon as no connection
    is left (hundreds of servers a run, each paid ~0.15 s)."""

    _loop: asyncio.AbstractEventLoop | None = None

    def install_signal_handlers(self) -> None:  # the test runner owns signals
        pass

    async def main_loop(self) -> None:
        # uvicorn's own loop (a tick every 0.1 s keeps the Date header fresh and checks
        # should_exit), with a wake-up that ends the wait early.
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's first steps (stop listening, ask each connection to finish: an idle
        # keep-alive one closes, a busy one after its response), then it sleeps 0.1 s and
        # waits in 0.1 s steps. Here the same wait, looking every 5 ms; whatever is still
        # open after 0.1 s goes through uvicorn's own shutdown and its grace period.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        state = self.server_state
        deadline = time.monotonic() + 0.1
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if state.connections or state.tasks or self.force_exit:
            await super().shutdown(sockets)
            return
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()

    def stop(self) -> None:
        """From another thread: exit now (before the main loop runs, its first tick sees it)."""
        self.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: it has ended
                self._loop.call_soon_threadsafe(self._wake.set)


@contextlib.contextmanager
def serve(services: Services, port: int) -> Iterator[str]:
    from idhub.web.app import create_app

    with serve_asgi(create_app(services), port) as url:
        yield url


@contextlib.contextmanager
def serve_asgi(app: Any, port: int | None = None) -> Iterator[str]:
    """Serves any ASGI app with a real uvicorn in a thread on 127.0.0.1; yields its URL."""
    port = port or free_port()
    # As `idhub serve` runs it: the app's own middleware decides what a forwarding header is worth.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", proxy_headers=False
    )
    with serve_config(config) as url:
        yield url


@contextlib.contextmanager
def serve_config(config: uvicorn.Config) -> Iterator[str]:
    """Runs uvicorn with `config` (on 127.0.0.1) in a thread; yields its URL once it listens."""
    server = _ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.stop()
        thread.join(timeout=10)


@pytest.fixture
def make_live_server(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services]
) -> Iterator[Callable[..., LiveServer]]:
    """Starts idhub on a free port whose URL is the issuer (unless `issuer` names another, as
    for a second replica behind the same name). Pass `db_url` and settings kwargs."""
    stack = contextlib.ExitStack()

    def factory(db_url: str, *, issuer: str | None = None, **settings_kwargs: Any) -> LiveServer:
        port = free_port()
        issuer = issuer or f"http://127.0.0.1:{port}"
        settings = make_settings(db_url, issuer=issuer, **settings_kwargs)
        services = make_services(settings)
        services.migrate()
        url = stack.enter_context(serve(services, port))
        return LiveServer(url=url, services=services)

    with stack:
        yield factory


@pytest.fixture
def live_server(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    return make_live_server(db_url)


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """A live server whose signing keys exist, ready to issue tokens."""
    live_server.services.keys.ensure_active(lambda _line: None)
    return live_server


# ------------------------------------------------------------------ the CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Runs `idhub ARGS` in-process against a config file; returns exit code and output."""
    from idhub.cli import main

    def runner(*args: str, config: Path | None = None, stdin: str | None = None) -> CliResult:
        argv = (["-c", str(config)] if config else []) + list(args)
        out, err = io.StringIO(), io.StringIO()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        # `main` always ends in sys.exit, with 0 on success.
        with (
            pytest.raises(SystemExit) as ended,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            main(argv)
        code = ended.value.code
        assert isinstance(code, int) or code is None, f"exit with a message: {code!r}"
        return CliResult(code=code or 0, out=out.getvalue(), err=err.getvalue())

    return runner


@pytest.fixture
def cli_config(tmp_path: Path, sqlite_db_url: str) -> Path:
    """An idhub.toml pointing at a fresh SQLite database, with a secret key file."""
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{sqlite_db_url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    return config


# ------------------------------------------------------------ a real OpenLDAP (directory sync)


@pytest.fixture(scope="session")
def slapd_company(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A session-wide slapd holding the generated company directory; tests only read it.

    Tests that edit entries use `make_slapd` for a server of their own."""
    from tests.slapd import Slapd, company_ldif

    company = company_ldif()
    server = Slapd(tmp_path_factory.mktemp("slapd-company"))
    server.slapadd(company.ldif)
    server.start()
    server.company = company  # type: ignore[attr-defined]
    yield server
    server.destroy()


@pytest.fixture
def make_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Starts a private slapd loaded with a generated company (kwargs go to company_ldif)."""
    from tests.slapd import Slapd, company_ldif

    made: list[Any] = []

    def factory(*, memberof: bool = False, **company_kwargs: Any) -> Any:
        company = company_ldif(**company_kwargs)
        server = Slapd(tmp_path_factory.mktemp("slapd"), memberof=memberof)
        made.append(server)
        server.slapadd(company.ldif)
        server.start()
        server.company = company
        return server

    yield factory
    for server in made:
        server.destroy()


# ------------------------------------------------------------ DingTalk and WeCom fakes


@pytest.fixture
def dingtalk() -> Iterator[DingTalkFake]:
    """The DingTalk fake with sign-in set up (tests/upstream_support.py), for this test only:
    tests script its answers and count its calls."""
    from tests.upstream_support import running_dingtalk

    yield from running_dingtalk()


@pytest.fixture
def wecom() -> Iterator[WeComFake]:
    """The WeCom fake, people distinct from the DingTalk fake's (tests/upstream_support.py)."""
    from tests.upstream_support import running_wecom

    yield from running_wecom()


# ------------------------------------------------------------ audit: never in the log

from tests.audit_scan import EngineTracker, KnownSecrets, Scanner, sink_files  # noqa: E402

_KNOWN_SECRETS = KnownSecrets()
_ENGINES = EngineTracker()


@pytest.fixture
def known_secrets() -> KnownSecrets:
    """Register every secret a test handles in clear (passwords, client secrets, codes,
    tokens): `known_secrets.add(value, ...)`. After the test, the audit trail of every
    database it touched and every *.jsonl(.gz) under its tmp_path must not contain them."""
    return _KNOWN_SECRETS


@pytest.fixture(autouse=True)
def _audit_holds_no_secrets(request: pytest.FixtureRequest) -> Iterator[None]:
    _ENGINES.take()
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    urls = _ENGINES.take()
    if not urls and tmp is None:
        return
    scanner = Scanner(TEST_SECRET_KEY, _KNOWN_SECRETS)
    problems = [p for url in sorted(urls) for p in scanner.scan_database(url)]
    if tmp is not None:
        problems += scanner.scan_files(sink_files(tmp))
    if problems:
        shown = "\n  ".join(problems[:20])
        pytest.fail(f"secrets reached the audit trail ({len(problems)}):\n  {shown}")

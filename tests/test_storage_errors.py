"""A database that cannot be reached surfaces as `StorageUnavailable` from the stores the token
side uses, and the token endpoint answers it with a 503 `temporarily_unavailable`, not a 500."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from idhub.adapters.client_store import SqlClientStore
from idhub.adapters.database import check_database_reachable
from idhub.adapters.key_store import SqlKeyStore
from idhub.adapters.token_store import SqlTokenStore
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.token_storage import RefreshFamily
from idhub.errors import StorageError, StorageUnavailable
from idhub.web.errors import exception_handlers
from tests.conftest import LiveServer, free_port, serve, serve_asgi
from tests.oidc_support import RP, web_client


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine whose every connection fails: an SQLite file in a directory that does not
    exist, or PostgreSQL on a 127.0.0.1 port nobody listens on."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'idhub.db'}"
        engine = create_engine(url)
    else:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/idhub"
        engine = create_engine(url, connect_args={"connect_timeout": 2})
    yield engine
    engine.dispose()


def test_store_calls_raise_storage_unavailable(unreachable_engine: Engine) -> None:
    tokens = SqlTokenStore(unreachable_engine)
    calls: list[Callable[[], object]] = [
        lambda: tokens.consume_code("h", 0.0),
        lambda: tokens.is_revoked("jti"),
        lambda: tokens.use_assertion("oa", "jti", expires_at=1.0),
        lambda: tokens.revoke_jti("jti", expires_at=1.0, now=0.0),
        lambda: tokens.rotate("h", new_hash="n", now=0.0, expires_at=1.0, client_id="oa"),
        lambda: tokens.start_family(
            RefreshFamily("f", "oa", 1, None, "openid", "oa", 0.0, None),
            token_hash="h",
            issued_at=0.0,
            expires_at=1.0,
        ),
        lambda: tokens.purge(0.0),
        lambda: SqlKeyStore(unreachable_engine).all(),
        lambda: SqlKeyStore(unreachable_engine).version(),
        lambda: SqlClientStore(unreachable_engine).get("oa"),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable) as raised:
            call()
        assert raised.value.code == "storage_unavailable"
        assert isinstance(raised.value, StorageError)
        assert raised.value.__cause__ is not None
    assert check_database_reachable(unreachable_engine) is False


def test_token_endpoint_answers_503_when_the_token_store_is_unreachable(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    services = make_services(make_settings(sqlite_db_url, issuer=f"http://127.0.0.1:{port}"))
    services.migrate()
    services.keys.ensure_active(lambda _line: None)
    _, secret = web_client(services, "oa")
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'idhub.db'}")
    # Clients, keys and audit stay on the working database: only the token store is cut off.
    services.token_store = SqlTokenStore(broken)  # type: ignore[misc]
    auth = ("oa", secret or "")
    with serve(services, port) as url:
        code = httpx.post(
            url + "/token",
            data={"grant_type": "authorization_code", "code": "c", "redirect_uri": RP},
            auth=auth,
        )
        refresh = httpx.post(
            url + "/token", data={"grant_type": "refresh_token", "refresh_token": "r"}, auth=auth
        )
        revoke = httpx.post(url + "/revoke", data={"token": "r"}, auth=auth)
    broken.dispose()
    for response in (code, refresh, revoke):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert "database" in response.json()["error_description"]


def test_storage_unavailable_is_a_503_with_a_plain_sentence() -> None:
    def fail(request: Request) -> Response:
        raise StorageUnavailable("SqlTokenStore.rotate: the database cannot be reached")

    app = Starlette(routes=[Route("/x", fail)], exception_handlers=exception_handlers())
    with serve_asgi(app) as url:
        response = httpx.get(url + "/x")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "storage_unavailable"
    assert "SqlTokenStore" not in body["error_description"]
    assert body["error_description"].endswith(".")


def test_an_untranslated_database_error_is_a_503_not_a_500(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str
) -> None:
    # A schema missing a table: the login page's user lookup fails inside a store; the
    # last-resort handler classifies the error instead of answering "internal error".
    from tests.sso_support import post_login

    server = make_live_server(sqlite_db_url)
    with server.services.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE users RENAME TO users_gone")
    headers = {"Accept-Language": "zh-CN", "Accept": "text/html"}
    with httpx.Client(base_url=server.url, headers=headers) as browser:
        page = browser.get("/login")
        failed = post_login(browser, page, "alice", "whatever-password")
        browser.headers["Accept"] = "application/json"
        again = post_login(browser, page, "alice", "whatever-password")
    assert failed.status_code == 503, failed.text
    assert "idhub 尚未完成初始化" in failed.text and "idhub init" not in failed.text
    assert again.status_code == 503 and again.json()["error"] == "schema_not_ready"


# ------------------------------------------------------------------ every store, one boundary


def _store_classes() -> list[type]:
    """Every `Sql*` class in `idhub.adapters` built on an engine (the audit log excepted: it
    answers `AuditError`, which the fronts turn into 503 the same way)."""
    import importlib
    import inspect
    import pkgutil

    import idhub.adapters

    found = []
    for info in pkgutil.iter_modules(idhub.adapters.__path__):
        module = importlib.import_module(f"idhub.adapters.{info.name}")
        for name, cls in vars(module).items():
            if not (
                inspect.isclass(cls)
                and name.startswith("Sql")
                and cls.__module__ == module.__name__
            ):
                continue
            params = list(inspect.signature(cls.__init__).parameters)
            if "engine" in params and name != "SqlAuditLog":
                found.append(cls)
    return found


def _translates_inside(member: object) -> bool:
    """Generators and context managers are left alone by `storage_boundary`: the work runs
    in the caller's `with` block, so they translate their own statements."""
    import inspect

    inner = getattr(member, "__wrapped__", member)
    return inspect.isgeneratorfunction(inner)


def test_every_public_store_method_translates_database_errors() -> None:
    import inspect

    from idhub.adapters._storage_errors import check_translated

    classes = _store_classes()
    assert len(classes) >= 15, [c.__name__ for c in classes]
    untranslated = [
        f"{cls.__name__}.{name}"
        for cls in classes
        for klass in cls.__mro__
        if klass.__module__.startswith("idhub.adapters")
        for name, member in vars(klass).items()
        if not name.startswith("_")
        and inspect.isfunction(member)
        and not _translates_inside(member)
        and not check_translated(member)
    ]
    assert not untranslated, untranslated


def test_the_stores_without_a_decorator_of_their_own_are_unavailable_not_500(
    unreachable_engine: Engine,
) -> None:
    from idhub.adapters.cas_store import SqlCasServiceStore, SqlCasTicketStore
    from idhub.adapters.directory_view import SqlDirectoryView
    from idhub.adapters.policy_state import SqlPolicyState
    from idhub.adapters.saml_store import SqlMessageIds, SqlSpStore
    from idhub.adapters.session_store import SqlDeliveryStore, SqlSessionStore
    from idhub.adapters.throttle_store import SqlThrottleStore
    from idhub.core.throttle import ThrottleKey

    calls: list[Callable[[], object]] = [
        lambda: SqlSessionStore(unreachable_engine).by_sid("sid"),
        lambda: SqlSessionStore(unreachable_engine).touch("sid", 1.0),
        lambda: SqlDeliveryStore(unreachable_engine).due(1.0),
        lambda: SqlThrottleStore(unreachable_engine).counters([ThrottleKey("ip", "10.0.0.1")]),
        lambda: SqlCasServiceStore(unreachable_engine).all(),
        lambda: SqlCasTicketStore(unreachable_engine).consume("h", 1.0),
        lambda: SqlSpStore(unreachable_engine).version(),
        lambda: SqlMessageIds(unreachable_engine).remember(
            "id", kind="authn", expires_at=2.0, now=1.0
        ),
        lambda: SqlPolicyState(unreachable_engine).latest(),
        lambda: SqlDirectoryView(unreachable_engine).fingerprint(),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            call()


def test_a_driver_error_from_a_raw_connection_is_translated(sqlite_db_url: str) -> None:
    """`is_revoked` runs on a raw driver cursor, past SQLAlchemy: a statement the driver
    refuses (here the table is gone) must still leave as a StorageError, not sqlite3's."""
    engine = create_engine(sqlite_db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE revoked_tokens")
        with pytest.raises(StorageError) as raised:
            SqlTokenStore(engine).is_revoked("jti")
        assert type(raised.value.__cause__).__module__ == "sqlite3"
    finally:
        engine.dispose()


RAW_PSYCOPG = """
import sys
from sqlalchemy import create_engine
from idhub.adapters._storage_errors import translate_storage_errors
from idhub.errors import SchemaNotReady
loaded_first = "psycopg" in sys.modules
engine = create_engine(sys.argv[1])  # loads psycopg, after the module above
raw = engine.raw_connection()

@translate_storage_errors
def read() -> None:
    raw.cursor().execute("SELECT 1 FROM idhub_no_such_table")

try:
    read()
except SchemaNotReady as exc:
    print(loaded_first, type(exc.__cause__).__module__)
"""


def test_a_psycopg_error_is_translated_though_psycopg_loaded_after_the_boundary(
    pg_database: str,
) -> None:
    """psycopg is not imported by the error boundary (an SQLite worker never loads it), yet on
    PostgreSQL the driver's own errors, past SQLAlchemy, still leave as idhub errors: in a
    fresh process where psycopg is first loaded by the engine, after the boundary module."""
    out = subprocess.run(
        [sys.executable, "-c", RAW_PSYCOPG, pg_database],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["False", "psycopg.errors"]

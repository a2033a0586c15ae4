"""The HTTP front door, over real sockets: limits enforced before anything is read, slow and
idle partial requests cut off, the headers every answer carries, and an access log without
credentials. The server-level defences are tested on the uvicorn configuration `idhub serve`
runs (`web/http_server.py`), the application-level ones on the usual live server."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from idhub.bootstrap import Services
from idhub.config import LimitsSettings, Settings
from idhub.web.app import create_app
from idhub.web.http_server import redact_target, server_config
from tests.conftest import LiveServer, free_port, serve_config
from tests.oidc_support import prepare

LIMITS_TOML = "[limits]\nrequest_timeout = 1.5\nmax_header_bytes = 8192\n"


@contextlib.contextmanager
def _serve(
    services: Services, port: int, *, log_level: str = "warning", http: Any = None
) -> Iterator[str]:
    config = server_config(
        create_app(services),
        limits=services.settings.limits,
        host="127.0.0.1",
        port=port,
        log_level=log_level,
    )
    if http is not None:
        config.http = http
    with serve_config(config) as url:
        yield url


@pytest.fixture
def live(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    """The usual live server; nothing here depends on the database engine."""
    return make_live_server(sqlite_db_url)


@pytest.fixture
def serve_hardened(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> Iterator[Callable[..., tuple[str, Services]]]:
    """Starts idhub with `idhub serve`'s uvicorn configuration; returns (url, services)."""
    stack = contextlib.ExitStack()

    def start(
        *, issuer: str | None = None, log_level: str = "warning", http: Any = None
    ) -> tuple[str, Services]:
        port = free_port()
        settings = make_settings(
            sqlite_db_url, issuer=issuer or f"http://127.0.0.1:{port}", toml=LIMITS_TOML
        )
        services = make_services(settings)
        services.migrate()
        prepare(services)
        server = _serve(services, port, log_level=log_level, http=http)
        return stack.enter_context(server), services

    with stack:
        yield start


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, bound: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (bounded wait)."""
    started = time.monotonic()
    sock.settimeout(0.5)
    received = b""
    while time.monotonic() - started < bound:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail(f"the server held the connection for more than {bound}s")
    return received, time.monotonic() - started


def _trickle(sock: socket.socket, *, bound: float) -> tuple[bytes, float]:
    """Sends one header byte every quarter second until the server closes (bounded)."""
    started = time.monotonic()
    sock.settimeout(0.25)
    answer = b""
    while time.monotonic() - started < bound:
        try:
            sock.sendall(b"X")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    else:
        pytest.fail(f"the server held the trickling connection for more than {bound}s")
    return answer, time.monotonic() - started


# ------------------------------------------------------------------ slow and idle requests


def test_slow_partial_requests_are_cut_off(
    serve_hardened: Callable[..., tuple[str, Services]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = serve_hardened()
    port = _port(url)
    # Headers trickling in a byte at a time (slowloris): 408 and closed after the deadline,
    # although bytes keep arriving.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer, took = _trickle(sock, bound=6)
    assert took < 5
    assert answer.startswith(b"HTTP/1.1 408")
    # A connection that never sends anything.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        answer, took = _read_until_closed(sock, 6)
    assert answer == b"" and took < 5
    # A body that stops half way: cut off, and the application logs one quiet line.
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"grant_type"
        )
        answer, took = _read_until_closed(sock, 6)
    assert answer.startswith(b"HTTP/1.1 408") and took < 5
    # The server still answers normal requests.
    assert httpx.get(url + "/healthz").status_code == 200


def test_a_client_leaving_mid_body_is_one_quiet_line(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", _port(live.url)), timeout=5) as sock:
        sock.sendall(
            b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            b"grant_type=client_credentials"
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any("went away" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    quiet = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(quiet) == 1 and quiet[0].levelno == logging.INFO
    assert quiet[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ sizes


def test_declared_oversize_bodies_are_refused_before_reading(live: LiveServer) -> None:
    for path in ("/token", "/api/v1/authz/check", "/login"):
        with socket.create_connection(("127.0.0.1", _port(live.url)), timeout=5) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: 100000000\r\n\r\n".encode()
            )
            # Not one body byte was sent: the answer cannot have waited for it.
            answer, _ = _read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:100])
        assert b"invalid_request" in answer


def test_streamed_bodies_are_capped(live: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"grant_type=client_credentials&pad="
        for _ in range(20):
            yield b"a" * 8192

    response = httpx.post(
        live.url + "/token",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
    # The JSON APIs take more: a large but allowed body reaches the handler (and its token
    # check).
    large = httpx.post(
        live.url + "/api/v1/authz/check",
        content=b'{"user": "' + b"a" * 200_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert large.status_code == 401


def test_request_line_and_header_caps(
    live: LiveServer, serve_hardened: Callable[..., tuple[str, Services]]
) -> None:
    long_target = httpx.get(live.url + "/authorize", params={"state": "s" * 9000})
    assert long_target.status_code == 414
    many = {f"X-Filler-{i}": "1" for i in range(120)}
    assert httpx.get(live.url + "/healthz", headers=many).status_code == 431
    big_header = httpx.get(live.url + "/healthz", headers={"X-Big": "b" * 20000})
    assert big_header.status_code == 431
    assert httpx.get(live.url + "/healthz", headers={"X-Big": "b" * 2000}).status_code == 200
    # The server itself stops buffering a head that grows past the limit (8 KiB here).
    url, _ = serve_hardened()
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):  # the server may close while we still write
            for _ in range(12):
                sock.sendall(b"X-Big: " + b"b" * 1000 + b"\r\n")
                time.sleep(0.01)
        answer, took = _read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 400") and took < 1


# ------------------------------------------------------------------ headers


def _answers(url: str) -> dict[str, httpx.Response]:
    with httpx.Client(base_url=url) as client:
        return {
            "jwks": client.get("/jwks"),
            "discovery": client.get("/.well-known/openid-configuration"),
            "static": client.get("/static/idhub.css"),
            "health": client.get("/healthz"),
            "token": client.post("/token", data={"grant_type": "client_credentials"}),
            "userinfo": client.get("/userinfo"),
            "decision": client.post("/api/v1/authz/check", json={}),
            "audit": client.get("/api/v1/audit"),
            "login": client.get("/login"),
            "missing": client.get("/no/such/page"),
            "openapi": client.get("/api/v1/openapi.json"),
        }


def test_every_answer_carries_the_security_headers(
    serve_hardened: Callable[..., tuple[str, Services]],
) -> None:
    url, _ = serve_hardened(issuer="https://sso.example.test")
    for name, response in _answers(url).items():
        assert response.status_code < 500, name
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert "server" not in response.headers, name
        assert response.headers.get("strict-transport-security", "").startswith("max-age="), name
    answers = _answers(url)
    for name in ("token", "userinfo", "decision", "audit", "login", "missing", "health"):
        assert answers[name].headers.get("cache-control") == "no-store", name
    # Public documents keep their own caching; static files are cacheable.
    assert answers["jwks"].headers["cache-control"].startswith("public")
    assert answers["static"].headers.get("cache-control") != "no-store"


def test_no_hsts_for_a_plain_http_issuer(live: LiveServer) -> None:
    response = httpx.get(live.url + "/healthz")
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_405_names_every_allowed_method(live: LiveServer) -> None:
    cases = {
        "/authorize": {"GET", "HEAD", "POST"},
        "/login": {"GET", "HEAD", "POST"},
        "/token": {"POST"},
        "/jwks": {"GET", "HEAD"},
        "/api/v1/authz/check": {"POST"},
    }
    for path, methods in cases.items():
        response = httpx.request("PUT", live.url + path)
        assert response.status_code == 405, path
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == methods, path
        assert response.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ the access log


def test_the_access_log_carries_no_credentials(
    serve_hardened: Callable[..., tuple[str, Services]],
) -> None:
    url, _ = serve_hardened(log_level="info")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    secrets = {
        "code": "c0de-SECRET",
        "state": "st4te-SECRET",
        "id_token_hint": "eyJ.hint-SECRET",
        "access_token": "at-SECRET",
        "login_hint": "zhangsan-SECRET",
        "idhub_login_after": "ticket-SECRET",
    }
    try:
        httpx.get(url + "/authorize", params={"client_id": "oa", "scope": "openid", **secrets})
        httpx.get(url + "/logout", params={"id_token_hint": "eyJ.hint-SECRET"})
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        access.removeHandler(handler)
    assert len(lines) >= 2, lines
    text = "\n".join(lines)
    assert "SECRET" not in text
    assert "client_id=oa" in text and "scope=openid" in text and "code=-" in text


@pytest.mark.parametrize(("level", "logged"), [("warning", False), ("info", True)])
def test_the_access_line_is_formatted_only_when_it_is_written(level: str, logged: bool) -> None:
    """uvicorn formats its access line's arguments for every response once the logger has a
    handler, even when the level drops the record; idhub's protocol asks the level first."""
    import asyncio

    from uvicorn.server import ServerState

    from idhub.web import http_server

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called
        raise AssertionError

    config = server_config(app, limits=LimitsSettings(), host="127.0.0.1", port=0, log_level=level)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        for protocol in (http_server.GuardedHttpToolsProtocol, http_server.GuardedH11Protocol):
            made = protocol(config, ServerState(), {}, _loop=loop)
            assert made.access_logger.hasHandlers()
            assert made.access_log is logged, protocol.__name__
    finally:
        loop.close()


def test_redacted_targets() -> None:
    assert redact_target("/healthz") == "/healthz"
    assert redact_target("/cb?code=abc&state=xyz") == "/cb?code=-&state=-"
    assert redact_target("/authorize?response_type=code&x=%00") == (
        "/authorize?response_type=code&x=-"
    )


def test_the_parser_is_httptools_and_the_h11_fallback_guards_alike(
    serve_hardened: Callable[..., tuple[str, Services]],
) -> None:
    """`idhub serve` parses with httptools (a fifth of a token request's CPU less than h11);
    without it installed, the h11 protocol runs with the same deadline and head cap."""
    from idhub.web.http_server import GuardedH11Protocol, GuardedHttpToolsProtocol

    config = server_config(object(), limits=LimitsSettings(), host="127.0.0.1", port=1)
    assert config.http is GuardedHttpToolsProtocol
    url, _ = serve_hardened(http=GuardedH11Protocol)
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer, took = _trickle(sock, bound=6)
    assert answer.startswith(b"HTTP/1.1 408") and took < 5
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):
            for _ in range(12):
                sock.sendall(b"X-Big: " + b"b" * 1000 + b"\r\n")
                time.sleep(0.01)
        answer, took = _read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 400") and took < 1
    assert httpx.get(url + "/healthz").status_code == 200

"""How `idhub serve` runs uvicorn: size limits and timeouts enforced before the application
reads anything, no `Server` banner, and an access log without credentials in it.

uvicorn on its own closes idle keep-alive connections, but lets a client that sends one header
byte a second hold a connection (and a slot) for ever. `GuardedHttpToolsProtocol`
(web/http_protocol.py) gives every request a deadline from its first byte (or from the
connection opening) until its last; a request still incomplete then gets a 408 and the
connection is closed. It also stops buffering a request head that grows past
`[limits] max_header_bytes` (400 and closed). Sizes of bodies and the request target are
checked by `web/limits.py` inside the application.

The parser is httptools (llhttp, in C), not h11 (pure Python): measured on this box with
`wrk -t1 -c32` against a bare ASGI app, h11 spends ~125 µs of CPU per request and httptools
~35; on a token request that difference was a fifth of idhub's CPU. Over httptools, idhub's
protocol keeps uvicorn's connection handling (flow control, upgrades, shutdown, the 400 for
unparsable input) but does the per-request part itself with less work: one watchdog timer
per connection rather than two timers per request, no `asyncio.Event` per request, the
response head built in one pass and written with its body in one `write` (bench/bench_http.py:
~28% fewer instructions per request for the HTTP layer than uvicorn's cycle under the same
guards; docs/performance.md). `GuardedH11Protocol`, uvicorn's h11 protocol under the same
deadline, is what runs when httptools is not installed.
"""

from __future__ import annotations

import copy
import errno
import logging
import re
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from idhub.config import LimitsSettings
from idhub.errors import ConfigError
from idhub.web.http_guard import REQUEST_TIMEOUT_RESPONSE, access_logged, log

try:
    from idhub.web.http_protocol import GuardedHttpToolsProtocol
except ImportError:  # uvicorn without its `standard` extra: the h11 guard below serves
    GuardedHttpToolsProtocol = None  # type: ignore[assignment,misc]

# Query parameters whose values may appear in the access log; every other value (codes,
# state, tokens, hints, login tickets, return URLs carrying all of these) is replaced.
LOGGED_PARAMETERS = frozenset(
    {
        "response_type",
        "response_mode",
        "client_id",
        "redirect_uri",
        "scope",
        "prompt",
        "max_age",
        "display",
        "ui_locales",
        "acr_values",
        "code_challenge_method",
        "grant_type",
        "lang",
        "limit",
        "order",
        "outcome",
        "type",
        "error",
    }
)
REDACTED = "-"


def redact_target(target: str) -> str:
    """A request target (path and query) with every value outside `LOGGED_PARAMETERS` hidden."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        return path + "?" + REDACTED
    kept = [(k, v if k in LOGGED_PARAMETERS else REDACTED) for k, v in pairs]
    return path + "?" + urlencode(kept, safe="-:/")


class RedactingAccessFilter(logging.Filter):
    """uvicorn's access record is `'%s - "%s %s HTTP/%s" %d'` with the target third."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = re.sub(r"\?\S*", "?" + REDACTED, record.msg)
        return True


class RepeatedAddressFilter(logging.Filter):
    """`idhub serve` names the address it listens on, with what to open there; uvicorn's
    "Uvicorn running on ..." would only repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on"))


def log_config(log_format: str = "text") -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "redact": {"()": f"{__name__}.RedactingAccessFilter"},
        "address": {"()": f"{__name__}.RepeatedAddressFilter"},
    }
    # On the logger, so every handler anyone attaches sees the redacted target only.
    config["loggers"]["uvicorn.access"]["filters"] = ["redact"]
    config["loggers"]["uvicorn.error"]["filters"] = ["address"]
    if log_format == "json":
        from idhub.web.log_format import json_logging_config

        config = json_logging_config(config)
    return config


def listen_socket(host: str, port: int) -> socket.socket:
    """The bound socket `run` serves on, opened before anything else starts so that a port in
    use ends `idhub serve` with one sentence saying which port and how to pick another, not
    uvicorn's "[Errno 98]" after the application has started up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            # Ten up, not one: `make demo` puts its example systems on the next ports.
            other = port + 10 if port + 10 <= 65535 else port - 10
            raise ConfigError(
                f"port {port} on {host} is already in use",
                hint=f"another idhub or program listens there; stop it, or choose a free port: "
                f"IDHUB_PORT={other} make run, or idhub serve --port {other}",
            ) from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise ConfigError(
                f"cannot listen on {host}: no such address on this machine",
                hint="set IDHUB_HOST or [server] host, e.g. 127.0.0.1",
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"not allowed to listen on port {port}",
                hint="ports below 1024 need privileges; choose another with IDHUB_PORT",
            ) from None
        raise
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host!r}: {exc}") from None
    # Listening at once: two sockets bound with SO_REUSEADDR and neither listening yet may
    # share a port on Linux, and the second idhub would only fail after starting up.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class IdhubServerConfig(uvicorn.Config):
    """uvicorn's settings plus the request deadline; pickled as is into worker processes."""

    def __init__(self, app: Any, *, request_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.request_timeout = request_timeout


class _RequestDeadline:
    """The per-request deadline both guarded protocols share: armed when a request's first
    byte arrives (or the connection opens), disarmed once the request is whole."""

    loop: Any
    transport: Any
    cycle: Any
    _request_timeout: float
    _deadline: Any
    _partial: bool

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._deadline = self.loop.call_later(self._request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        started = self.cycle is not None and self.cycle.response_started
        if self._partial and not started:
            log.info("request not complete within %.0fs: connection closed", self._request_timeout)
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


class GuardedH11Protocol(_RequestDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each whole request (h11 itself
    caps an incomplete head at `h11_max_incomplete_event_size`)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.access_log = access_logged(self)
        self._request_timeout = float(getattr(config, "request_timeout", 10.0))
        self._deadline: Any = None
        self._partial = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()
        self._partial = True
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(
    app: Any,
    *,
    limits: LimitsSettings,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    factory: bool = False,
    proxy_headers: bool = True,
    log_format: str = "text",
) -> IdhubServerConfig:
    """The uvicorn configuration `idhub serve` runs (and the tests serve with)."""
    return IdhubServerConfig(
        app,
        request_timeout=limits.request_timeout,
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        http=GuardedH11Protocol if GuardedHttpToolsProtocol is None else GuardedHttpToolsProtocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_timeout,
        server_header=False,
        proxy_headers=proxy_headers,
        log_level=log_level,
        log_config=log_config(log_format),
        # In JSON, idhub's own access record (web/observe.py) replaces uvicorn's line.
        access_log=log_format != "json",
        lifespan="on",
    )


def run(config: IdhubServerConfig, sock: socket.socket | None = None) -> None:
    """What `uvicorn.run` does with a ready configuration: one process, or a supervisor of
    `config.workers` processes sharing one socket (`sock` from `listen_socket`, or bound here
    from the configuration's host and port)."""
    from uvicorn.supervisors import Multiprocess

    sock = sock or listen_socket(config.host, config.port)
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])

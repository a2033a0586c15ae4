"""Streaming sinks: a JSON-lines file and syslog (RFC 5424) to real sockets on 127.0.0.1,
fed by the shipper thread from the database (so events from any process arrive)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import Actor, EventType, RequestContext
from idhub.errors import ConfigError

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>idhub) (?P<pid>\d+) "
    rb"(?P<msgid>\S+) (?P<sd>\[idhub@32473(?: [a-z_]+=\"(?:[^\"\\\]]|\\.)*\")*\]) "
    rb"\xef\xbb\xbf(?P<msg>.*)$",
    re.S,
)


def _sd(sd: bytes) -> dict[str, str]:
    pairs = re.findall(rb'([a-z_]+)="((?:[^"\\\]]|\\.)*)"', sd)
    return {k.decode(): re.sub(r"\\(.)", r"\1", v.decode()) for k, v in pairs}


def _wait(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def udp_listener() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def test_syslog_udp_sink_sends_rfc5424(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    udp_listener: socket.socket,
) -> None:
    port = udp_listener.getsockname()[1]
    services = make_services(
        make_settings(db_url, toml=f'[audit]\nsyslog = "udp://127.0.0.1:{port}"\n')
    )
    services.audit.record(EventType.KEY_CREATED, actor=Actor.system())  # before the sink existed
    shipper = services.audit_shipper
    assert shipper is not None
    services.runtime.start_job("audit-sinks")
    try:
        services.audit.record(
            EventType.LOGIN_FAILED,
            actor=Actor("user", 'ali"ce]'),
            target="client:oa",
            outcome="failure",
            details={"reason": "bad_password", "名": "张三"},
            ctx=RequestContext("10.0.0.7", "Firefox", "rid-0000001"),
        )
        services.audit.record(EventType.TOKEN_ISSUED, actor=Actor("client", "oa"), target="oa")
        messages = [udp_listener.recv(65535) for _ in range(2)]
    finally:
        services.runtime.stop_job("audit-sinks")
    first = RFC5424.match(messages[0])
    assert first is not None, messages[0]
    assert int(first["pri"]) == 10 * 8 + 5  # authpriv.notice for a failure
    assert first["msgid"] == b"login.failed"
    sd = _sd(first["sd"])
    body = json.loads(first["msg"].decode("utf-8"))
    assert sd["seq"] == "2" and body["seq"] == 2  # the event before the sink was not replayed
    assert sd["actor"] == 'user:ali"ce]' and sd["ip"] == "10.0.0.7"
    assert sd["hash"] == body["hash"] and len(sd["prev"]) == 64
    assert body["details"]["名"] == "张三"
    (stored,) = services.audit_log.search(after_seq=1, limit=1, newest_first=False)
    assert stored.hash == body["hash"]
    second = RFC5424.match(messages[1])
    assert second is not None and int(second["pri"]) == 10 * 8 + 6
    assert _sd(second["sd"])["seq"] == "3"
    assert second["ts"].endswith(b"Z") and b"T" in second["ts"]


def test_syslog_tcp_sink_retries_until_the_collector_is_up(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    services = make_services(
        make_settings(sqlite_db_url, toml=f'[audit]\nsyslog = "tcp://127.0.0.1:{port}"\n')
    )
    shipper = services.audit_shipper
    assert shipper is not None
    shipper.ship_once()  # sets the start position at the (empty) head
    for i in range(3):
        services.audit.record(EventType.USER_CREATED, actor=Actor("admin", "root"), target=f"u{i}")
    assert shipper.ship_once() == 0
    assert "Connection refused" in shipper.readiness()

    received = bytearray()
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen()

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            while chunk := conn.recv(65536):
                received.extend(chunk)

    reader = threading.Thread(target=accept)
    reader.start()
    try:
        assert shipper.ship_once() == 3
        assert shipper.readiness() == "ok"
    finally:
        shipper.close()
        reader.join(10)
        server.close()
    # Octet counting (RFC 6587): "LEN SP MSG" repeated.
    frames, data = [], bytes(received)
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    targets = [json.loads(RFC5424.match(f)["msg"])["target"] for f in frames]  # type: ignore[index]
    assert targets == ["u0", "u1", "u2"]


def test_jsonl_sink_copies_the_chain_and_resumes_after_restart(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
    run_cli: Any,
) -> None:
    sink = tmp_path / "siem" / "audit.jsonl"
    toml = f'[audit]\njsonl_path = "{sink}"\n'
    services = make_services(make_settings(db_url, toml=toml))
    for i in range(3):
        services.audit.record(EventType.SYNC_CHANGE, actor=Actor.system("sync"), target=f"a{i}")
    shipper = services.audit_shipper
    assert shipper is not None
    services.runtime.start_job("audit-sinks")
    services.audit.record(EventType.SYNC_RUN, actor=Actor.system("sync"))
    _wait(lambda: sink.exists() and len(sink.read_text().splitlines()) == 4)
    services.runtime.stop_job("audit-sinks")

    # Another process (a fresh Services) appends while nothing ships; a restarted shipper
    # picks up exactly where the file ends.
    other = make_services(make_settings(db_url, toml=toml))
    for i in range(2):
        other.audit.record(EventType.SYNC_CHANGE, actor=Actor.system("sync"), target=f"b{i}")
    restarted = other.audit_shipper
    assert restarted is not None
    assert restarted.ship_once() == 2
    lines = [json.loads(line) for line in sink.read_text(encoding="utf-8").splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    stored = {e.seq: e.hash for e in services.audit_log.search(limit=100)}
    assert all(stored[e["seq"]] == e["hash"] for e in lines)
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, 6))

    # The copy notices what the chain alone cannot: events cut off the end.
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n\n{toml}', encoding="utf-8")
    assert run_cli("audit", "verify", config=config).code == 0
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 5"))
    result = run_cli("audit", "verify", config=config)
    assert result.code == 1
    assert "head check against the JSON-lines sink" in result.out and "FAILED" in result.out


def test_live_server_starts_the_shipper_and_reports_readiness(
    make_live_server: Callable[..., Any], sqlite_db_url: str, tmp_path: Path
) -> None:
    sink = tmp_path / "audit.jsonl"
    server = make_live_server(sqlite_db_url, toml=f'[audit]\njsonl_path = "{sink}"\n')
    server.services.audit.record(EventType.POLICY_RELOADED, actor=Actor.system("policy"))
    _wait(lambda: sink.exists() and "policy.reloaded" in sink.read_text())
    ready = httpx.get(f"{server.url}/readyz").json()
    # A sink is never a readiness check (a SIEM down must not empty the balancer), only a
    # warning while it fails.
    assert "audit_sinks" not in ready["checks"]
    assert not [line for line in ready["warnings"] if "audit" in line]


def test_bad_syslog_url_is_a_config_error(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> None:
    services = make_services(
        make_settings(sqlite_db_url, toml='[audit]\nsyslog = "syslog.example"\n')
    )
    with pytest.raises(
        ConfigError, match=r"idhub.toml: \[audit\] syslog = 'syslog.example' must start"
    ):
        _ = services.audit_shipper


def test_two_workers_shipping_one_file_never_duplicate(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
) -> None:
    """`idhub serve --workers 2` starts a shipper in each worker, both on the same file."""
    sink = tmp_path / "audit.jsonl"
    toml = f'[audit]\njsonl_path = "{sink}"\n'
    workers = [make_services(make_settings(db_url, toml=toml)) for _ in range(2)]
    shippers = [w.audit_shipper for w in workers]
    for worker, shipper in zip(workers, shippers, strict=True):
        assert shipper is not None
        job = worker.runtime.job("audit-sinks")
        worker.runtime.replace(replace(job, interval=0.01))  # poll hard so the two really race
        worker.runtime.start_job("audit-sinks")
    try:
        for i in range(150):
            workers[i % 2].audit.record(EventType.TOKEN_ISSUED, actor=Actor("client", "oa"),
                                        target=str(i))  # fmt: skip
        _wait(lambda: sink.exists() and len(sink.read_text().splitlines()) >= 150)
    finally:
        for worker in workers:
            worker.runtime.stop_job("audit-sinks")
    seqs = [json.loads(line)["seq"] for line in sink.read_text(encoding="utf-8").splitlines()]
    assert seqs == list(range(1, 151))

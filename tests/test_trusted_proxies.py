"""Which client address idhub believes: `[server] trusted_proxies` decides, the same in one
uvicorn worker and in `idhub serve --workers 2`, and the audit trail records that address."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from idhub.bootstrap import Services
from idhub.config import Settings, load_settings
from idhub.web.proxies import TrustedProxies
from tests.conftest import REPO, TEST_SECRET_KEY, LiveServer, free_port
from tests.sso_support import events, login, make_user

XFF = b"x-forwarded-for"
FWD = b"forwarded"


def test_the_right_most_untrusted_address_is_the_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.168.1.1"])
    # Not from a proxy: the header proves nothing.
    assert proxies.client_address("203.0.113.9", [(XFF, b"1.2.3.4")]) == "203.0.113.9"
    # From a proxy: what the client wrote on the left is skipped, as are further proxies.
    chain = [(XFF, b"6.6.6.6, 198.51.100.7, 10.1.2.3")]
    assert proxies.client_address("10.0.0.2", chain) == "198.51.100.7"
    assert proxies.client_address("192.168.1.1", [(XFF, b"198.51.100.7")]) == "198.51.100.7"
    # Several header lines are one list, in order.
    lines = [(XFF, b"6.6.6.6"), (XFF, b"198.51.100.8")]
    assert proxies.client_address("10.0.0.2", lines) == "198.51.100.8"
    # A proxy without a header, or a chain of proxies only, is what it is.
    assert proxies.client_address("10.0.0.2", []) == "10.0.0.2"
    assert proxies.client_address("10.0.0.2", [(XFF, b"10.9.9.9")]) == "10.9.9.9"
    # Garbage written by a trusted hop stops the walk at the last address believed.
    assert proxies.client_address("10.0.0.2", [(XFF, b"1.2.3.4, nonsense")]) == "10.0.0.2"
    # Ports and IPv4-mapped IPv6 addresses are normalised.
    assert proxies.client_address("::ffff:10.0.0.2", [(XFF, b"198.51.100.7:5555")]) == (
        "198.51.100.7"
    )
    # No trusted proxies at all: never believed, from anywhere.
    assert TrustedProxies([]).client_address("127.0.0.1", chain) == "127.0.0.1"


def test_only_the_configured_header_is_read() -> None:
    xff = TrustedProxies(["10.0.0.0/8"])
    rfc = TrustedProxies(["10.0.0.0/8"], header="forwarded")
    headers = [
        (FWD, b'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https'),
        (XFF, b"198.51.100.7"),
    ]
    # A proxy that sets X-Forwarded-For passes a client's own Forwarded header through.
    assert xff.client_address("10.0.0.2", headers) == "198.51.100.7"
    assert rfc.client_address("10.0.0.2", headers) == "2001:db8:cafe::17"
    assert rfc.client_address("10.0.0.2", [(FWD, b"for=unknown")]) == "10.0.0.2"
    assert rfc.client_address("10.0.0.2", [(FWD, b"for=198.51.100.9;by=10.0.0.2")]) == (
        "198.51.100.9"
    )


def test_bad_proxy_settings_are_config_errors(make_settings: Callable[..., Settings]) -> None:
    from idhub.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_proxies"):
        make_settings("sqlite://", toml='[server]\ntrusted_proxies = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match="proxy_header"):
        make_settings("sqlite://", toml='[server]\nproxy_header = "x-real-ip"\n')


def _failed_login_ip(url: str, services: Services, forwarded: str) -> str | None:
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": forwarded}) as client:
        assert login(client, "nobody", "some-guess-1").status_code == 401
    return events(services, "login.failed")[-1]["client_ip"]  # type: ignore[no-any-return]


def test_one_worker_believes_the_header_only_from_trusted_proxies(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str
) -> None:
    plain = make_live_server(sqlite_db_url)
    assert _failed_login_ip(plain.url, plain.services, "198.51.100.7") == "127.0.0.1"
    behind = make_live_server(sqlite_db_url, toml='[server]\ntrusted_proxies = ["127.0.0.1"]\n')
    spoofed = "6.6.6.6, 198.51.100.7"
    assert _failed_login_ip(behind.url, behind.services, spoofed) == "198.51.100.7"


def test_the_throttle_sees_each_client_behind_the_proxy(
    make_live_server: Callable[..., LiveServer], db_url: str
) -> None:
    toml = (
        '[server]\ntrusted_proxies = ["127.0.0.0/8"]\n\n'
        "[throttle]\nip_free = 2\nip_limit = 3\nip_lock = 120\n"
    )
    live = make_live_server(db_url, toml=toml)
    make_user(live.services, "grace", "grace-password-1")
    attacker = {"X-Forwarded-For": "203.0.113.66", "Accept-Language": "en"}
    with httpx.Client(base_url=live.url, headers=attacker) as client:
        statuses = [login(client, f"name{i}", "Password1!x").status_code for i in range(3)]
        refused = login(client, "grace", "grace-password-1")
    assert statuses == [401, 401, 401]
    assert refused.status_code == 401 and "Too many attempts. Try again in 2 min." in refused.text
    assert refused.headers["retry-after"] == "120"
    # Another person behind the same proxy signs in as usual.
    colleague = {"X-Forwarded-For": "198.51.100.10"}
    with httpx.Client(base_url=live.url, headers=colleague) as client:
        assert login(client, "grace", "grace-password-1").status_code == 200
    throttled = events(live.services, "login.throttled")
    assert [e["client_ip"] for e in throttled] == ["203.0.113.66"]


# ------------------------------------------------------------------ idhub serve (subprocess)


@contextlib.contextmanager
def _serve(tmp_path: Path, *, workers: int, toml: str) -> Iterator[tuple[str, Path]]:
    var = tmp_path / f"var-{workers}"
    var.mkdir(parents=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    port = free_port()
    config = tmp_path / f"idhub-{workers}.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "sqlite:///{var / "idhub.db"}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n\n'
        f'[server]\nissuer = "http://127.0.0.1:{port}"\n{toml}',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("IDHUB_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "serve", "--port", str(port),
         "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"idhub serve exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("idhub serve did not start")
            time.sleep(0.2)
        yield url, config
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_decides_the_same_with_one_worker_or_two(
    tmp_path: Path,
    workers: int,
    make_services: Callable[..., Services],
) -> None:
    trusted = 'trusted_proxies = ["127.0.0.1"]\n'
    for name, toml, expected in (("plain", "", "127.0.0.1"), ("trusted", trusted, "198.51.100.7")):
        with _serve(tmp_path / name, workers=workers, toml=toml) as (url, config):
            services = make_services(load_settings(config, env={}))
            # Enough requests for both workers to answer some.
            for _ in range(4):
                with httpx.Client(
                    base_url=url, headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
                ) as client:
                    assert login(client, "nobody", "some-guess-1").status_code == 401
            ips = {e["client_ip"] for e in events(services, "login.failed")}
            assert ips == {expected}, (workers, toml)

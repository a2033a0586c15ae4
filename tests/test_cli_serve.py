"""`idhub serve` as `make run` starts it: a port in use is one line naming the port and
IDHUB_PORT (no uvicorn "[Errno 98]"), and a server that starts says once where it listens
and what to open next, and those URLs answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from idhub.cli.setup import serve_banner
from tests.conftest import REPO, TEST_SECRET_KEY, free_port


def _config(tmp_path: Path, port: int) -> Path:
    var = tmp_path / "var"
    var.mkdir()
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n\n'
        f"[server]\nport = {port}\n",
        encoding="utf-8",
    )
    return config


def _serve(config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(_config(tmp_path, port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert err == (
        f"idhub: error: port {port} on 127.0.0.1 is already in use (another idhub or program "
        f"listens there; stop it, or choose a free port: IDHUB_PORT={port + 10} make run, "
        f"or idhub serve --port {port + 10})\n"
    )


def test_serve_says_once_where_it_listens_and_what_to_open(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(_config(tmp_path, port))
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[0] == f"idhub listening on {base} (1 worker); Ctrl-C stops it\n"
        assert lines[1] == f"  sign in:    {base}/login\n"
        assert lines[2] == f"  discovery:  {base}/.well-known/openid-configuration\n"
        assert "`make demo`" in lines[3]
        deadline = time.monotonic() + 30
        while True:
            try:
                login = httpx.get(f"{base}/login", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert login.status_code == 200
        discovery = httpx.get(f"{base}/.well-known/openid-configuration", timeout=5)
        # the issuer followed the port: no IDHUB_ISSUER was needed
        assert discovery.json()["issuer"] == base
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "Uvicorn running on" not in err and base not in err


def test_the_banner_notes_an_issuer_on_another_local_port() -> None:
    lines = serve_banner("http://127.0.0.1:8000", host="127.0.0.1", port=9401, workers=2)
    assert lines[0] == (
        "idhub listening on http://127.0.0.1:9401 as http://127.0.0.1:8000 (2 workers); "
        "Ctrl-C stops it"
    )
    assert lines[1].startswith("note: the issuer names port 8000, idhub listens on 9401")
    assert "IDHUB_ISSUER=http://127.0.0.1:9401" in lines[1]
    public = serve_banner("https://sso.example.com/", host="0.0.0.0", port=8000, workers=1)  # noqa: S104
    assert not any(line.startswith("note:") for line in public)
    assert "  sign in:    https://sso.example.com/login" in public

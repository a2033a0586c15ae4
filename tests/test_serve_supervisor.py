"""`idhub serve --workers N`: the supervisor is a lean process of its own (web/supervisor.py),
not a copy of the whole application that never serves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, TEST_SECRET_KEY, free_port


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_the_supervisor_of_two_workers_does_not_load_the_app(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    port = free_port()
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "sqlite:///{var / "idhub.db"}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n\n'
        f'[server]\nissuer = "http://127.0.0.1:{port}"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("IDHUB_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "serve", "--port", str(port),
         "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "idhub serve did not start"
            time.sleep(0.3)
        # The same pid (what a service manager watches) now runs the lean supervisor.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"idhub.web.supervisor" in cmdline
        # The application alone imports about 64 MB; the supervisor holds uvicorn only.
        assert _rss_mb(proc.pid) < 45
        workers = [
            p for p in _children(proc.pid) if b"resource_tracker" not in Path(
                f"/proc/{p}/cmdline").read_bytes()
        ]  # fmt: skip
        assert len(workers) == 2
        assert all(_rss_mb(p) > 45 for p in workers)  # they do serve the application
        for _ in range(4):
            with httpx.Client(base_url=url) as client:
                assert client.get("/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode is not None

"""`make demo` and the commands examples/README.md shows, run as a newcomer would: the demo
launcher starts idhub and both systems, prints the URLs and users, each URL leads to a working
page (a sign-in lands on OA's home page), a busy port is one clear line, Ctrl-C stops all three,
and a second start reuses what the first registered."""

from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from idhub.demo import USERS
from tests.conftest import REPO, TEST_SECRET_KEY, free_port
from tests.sso_support import hidden_fields

_ACTION = re.compile(r'<form method="post" action="(/login[^"]*)"')


def _env(tmp_path: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDHUB_", "OA_", "REIMBURSE_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
        IDHUB_VAR_DIR=str(tmp_path / "var"),
        IDHUB_POLICY_DIR=str(REPO / "policies"),
        IDHUB_SECRET_KEY=TEST_SECRET_KEY,
        IDHUB_PORT=str(ports["idhub"]),
        OA_PORT=str(ports["oa"]),
        REIMBURSE_PORT=str(ports["reimburse"]),
    )
    return env


class Demo:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.demo"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []

    def wait_for_banner(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                pytest.fail(
                    f"the demo stopped: {self.process.stderr.read() if self.process.stderr else ''}"
                )
            self.out.append(line)
            if line.startswith("try:"):
                return "".join(self.out)
        pytest.fail("the demo printed no banner within 90 s")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


@pytest.fixture
def ports() -> dict[str, int]:
    return {"idhub": free_port(), "oa": free_port(), "reimburse": free_port()}


@pytest.fixture
def demo(tmp_path: Path, ports: dict[str, int]) -> Iterator[Demo]:
    running = Demo(tmp_path, _env(tmp_path, ports))
    yield running
    if running.process.poll() is None:
        running.interrupt()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _sign_in_at(url: str, username: str, password: str) -> httpx.Response:
    """Opens a system's page and signs in at idhub the way a browser without JavaScript would."""
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(url)
        assert page.status_code == 200 and 'name="password"' in page.text, page.text[:300]
        fields = hidden_fields(page.text)
        fields.update(username=username, password=password)
        action = _ACTION.search(page.text)
        assert action, page.text[:300]
        target = str(page.url.copy_with(raw_path=html.unescape(action.group(1)).encode()))
        return browser.post(target, data=fields)


def test_make_demo_serves_three_working_pages_and_stops_on_ctrl_c(
    demo: Demo, tmp_path: Path, ports: dict[str, int], known_secrets
) -> None:
    known_secrets.add(*(person.password for person in USERS))
    banner = demo.wait_for_banner()
    for name, port in ports.items():
        assert f"http://127.0.0.1:{port}/" in banner, name
    for person in USERS:
        assert re.search(rf"^  {person.username}\s+{re.escape(person.password)}\s", banner, re.M)

    # Every printed URL is a working page; a sign-in ends on OA's home page, not a dead port.
    discovery = httpx.get(f"http://127.0.0.1:{ports['idhub']}/.well-known/openid-configuration")
    assert discovery.status_code == 200
    home = _sign_in_at(f"http://127.0.0.1:{ports['oa']}/", "alice", "alice-demo-1")
    assert home.status_code == 200 and str(home.url) == f"http://127.0.0.1:{ports['oa']}/"
    assert "王小丽 (alice)" in home.text and "employee" in home.text
    reimburse = httpx.get(f"http://127.0.0.1:{ports['reimburse']}/", follow_redirects=True)
    assert reimburse.status_code == 200 and 'name="password"' in reimburse.text
    refused = httpx.post(f"http://127.0.0.1:{ports['reimburse']}/api/budget-reservations", json={})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"

    # A second demo while the first runs: one line naming the busy port, exit code 1.
    second = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=tmp_path,
        env=_env(tmp_path, ports),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"make demo: port {ports['idhub']} (idhub) is in use: stop what serves it (`make run`, "
        "an earlier demo?) or choose another with IDHUB_PORT"
    ]

    # Ctrl-C stops all three.
    assert demo.interrupt() == 0
    assert not any(_listening(port) for port in ports.values())
    # The console shows idhub's and the systems' own lines, no library's deprecation notices.
    console = demo.process.stderr.read() if demo.process.stderr else ""
    assert "Warning" not in console, console[-2000:]

    # Started again: the systems are already registered; a fresh secret works.
    again = Demo(tmp_path, _env(tmp_path, ports))
    try:
        again.wait_for_banner()
        home = _sign_in_at(f"http://127.0.0.1:{ports['reimburse']}/", "bob", "bob-demo-1")
        assert home.status_code == 200 and "李强 (bob)" in home.text
    finally:
        assert again.interrupt() == 0


def test_make_demo_runs_the_launcher() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "$(BIN)/python -m examples.demo" in target.group(1)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "http://127.0.0.1:8001/" in readme

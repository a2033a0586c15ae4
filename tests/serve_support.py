"""`idhub serve` as a real subprocess on a free port (several workers, log formats)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO, TEST_SECRET_KEY, free_port


@dataclass
class Served:
    url: str
    config: Path
    var: Path
    output: Path  # stdout and stderr of the server, together


def write_config(tmp_path: Path, *, db_url: str | None = None, toml: str = "") -> Served:
    var = tmp_path / "var"
    var.mkdir(parents=True, exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "idhub.toml"
    db_url = db_url or f"sqlite:///{var / 'idhub.db'}"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n\n'
        f'[server]\nissuer = "{url}"\nport = {port}\n{toml}',
        encoding="utf-8",
    )
    return Served(url=url, config=config, var=var, output=tmp_path / "server.log")


@contextlib.contextmanager
def serve(served: Served, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    for name in ("IDHUB_CONFIG", "PROMETHEUS_MULTIPROC_DIR", "IDHUB_LOG_FORMAT"):
        if name not in (env or {}):
            environment.pop(name, None)
    with open(served.output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "idhub", "-c", str(served.config), "serve", *args],
            stdout=out, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"idhub serve exited: {served.output.read_text()!r}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(served.url + "/healthz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("idhub serve did not start")
                time.sleep(0.2)
            yield served
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

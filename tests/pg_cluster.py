"""A throwaway PostgreSQL cluster for tests that stop, restart or pause the database: its own
data directory and port, run as the `postgres` OS user, so the shared server is never touched."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"no {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


def check_available() -> str | None:
    """None when a cluster can be made here, else why not (for pytest.skip)."""
    try:
        _bin("initdb")
    except FileNotFoundError as exc:
        return str(exc)
    if os.geteuid() != 0 and os.environ.get("USER") != "postgres":
        return "starting a PostgreSQL cluster needs root (to run as postgres) or the postgres user"
    return None


class PgCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="idhub-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.root, "postgres", "postgres")

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        self._as_postgres(
            _bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._as_postgres(
            _bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "30",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self.resume()
        self._as_postgres(
            _bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop",
            check=False,
        )  # fmt: skip

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pids(self) -> list[int]:
        """The postmaster and every backend / auxiliary process under it."""
        pidfile = self.data / "postmaster.pid"
        try:
            master = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [master]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(Path(stat).parent.name))
        return pids

    def pause(self) -> None:
        """SIGSTOP on the whole cluster: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        for pid in self.pids():
            # A backend whose session ended since it was listed has nothing to stop.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def running_cluster() -> Iterator[PgCluster]:
    """A started cluster for a module's tests, destroyed after them (a fixture's body:
    `yield from running_cluster()`); skips where none can be made."""
    reason = check_available()
    if reason:
        pytest.skip(reason)
    made = PgCluster()
    try:
        made.init()
        made.start()
        yield made
    finally:
        made.destroy()

"""Every `idhub` command ends in one line and an exit code, whatever fails: a database that
cannot be reached or was never initialised (SQLite and PostgreSQL), a file that cannot be
written, a reader that closed the pipe; and no library or internal log line reaches the
command's stderr. Run in-process where stderr is the subject's own, in a subprocess where the
process's real file descriptors and logging set-up are."""

from __future__ import annotations

import http.server
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_SERVER, REPO, TEST_SECRET_KEY, CliResult, free_port

Run = Callable[..., CliResult]


def config_for(tmp_path: Path, url: str, extra: str = "") -> Path:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n{extra}',
        encoding="utf-8",
    )
    return config


def one_line(result: CliResult) -> str:
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err and result.out == ""
    assert result.err.startswith("idhub: error: ")
    return result.err


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database that answers but where `idhub init` never ran."""
    if request.param == "sqlite":
        path = tmp_path / "never-initialised.db"
        create_engine(f"sqlite:///{path}").connect().close()
        yield f"sqlite:///{path}"
        return
    name = f"idhub_empty_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


COMMANDS = (
    ("user", "list"),
    ("client", "list"),
    ("audit", "verify"),
    ("session", "list", "--user", "alice"),
    ("policy", "explain", "alice", "reimburse", "expense_report", "read"),
)


def test_a_database_never_initialised_says_run_init(
    run_cli: Run, tmp_path: Path, empty_database: str
) -> None:
    config = config_for(tmp_path, empty_database)
    for command in COMMANDS:
        line = one_line(run_cli(*command, config=config))
        assert "run `idhub init`" in line, (command, line)
    # a reload reports the policy rejected (exit 1), for the same reason
    reload = run_cli("policy", "reload", config=config)
    assert reload.code == 1 and "Traceback" not in reload.err
    assert "the database has no idhub tables: run `idhub init`" in reload.out
    assert len(reload.out.splitlines()) == 2, reload.out
    # and once initialised, the same command works
    assert run_cli("init", config=config).code == 0
    assert run_cli("user", "list", config=config).code == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_that_cannot_be_reached_is_one_line(
    run_cli: Run, tmp_path: Path, backend: str
) -> None:
    if backend == "postgresql":
        # A closed port: nothing listens there.
        url = f"postgresql+psycopg://idhub:pw-not-shown@127.0.0.1:{free_port()}/idhub"
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("", encoding="utf-8")
        url = f"sqlite:///{blocker}/idhub.db"
    config = config_for(tmp_path, url)
    for command in (("user", "list"), ("migrate",), ("audit", "verify")):
        result = run_cli(*command, config=config)
        assert result.code == 2
        line = one_line(result)
        assert "pw-not-shown" not in line
        if backend == "postgresql":
            assert "cannot be reached" in line and "****@127.0.0.1" in line, line


def test_a_file_that_cannot_be_written_is_one_line(run_cli: Run, cli_config: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    result = run_cli("audit", "export", "-o", "/nonexistent-dir/audit.jsonl", config=cli_config)
    assert result.code == 2
    assert one_line(result) == (
        "idhub: error: /nonexistent-dir/audit.jsonl: No such file or directory\n"
    )


# ------------------------------------------------------------------ as a process


def idhub_process(
    *args: str, config: Path, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_reader_closing_the_pipe_ends_quietly(cli_config: Path) -> None:
    # `idhub policy test -v | head -0`: the reader is gone before the first byte is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        ended = idhub_process("policy", "test", "-v", config=cli_config, stdout=write_end)
    finally:
        os.close(write_end)
    assert ended.returncode == 141
    assert ended.stderr == ""


@pytest.fixture
def backchannel_receiver() -> Iterator[str]:
    """A relying party's back-channel logout endpoint that accepts every logout token."""

    class Accept(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/backchannel"
    finally:
        server.shutdown()
        server.server_close()


def test_no_log_lines_reach_stderr(cli_config: Path, backchannel_receiver: str) -> None:
    from idhub.bootstrap import Services
    from idhub.config import load_settings
    from idhub.core.audit import Actor

    services = Services(load_settings(cli_config))
    try:
        services.migrate()
        services.keys.ensure_active(lambda _line: None)  # the logout token is signed
        user = services.identity.create_user(username="wang", department_path="/总部")
        client, _secret = services.clients.register(
            "oa",
            name="OA",
            redirect_uris=["http://127.0.0.1:9/cb"],
            backchannel_logout_uri=backchannel_receiver,
            actor=Actor("admin", "test"),
        )
        _cookie, session = services.sessions.start(user, amr=("pwd",))
        services.sessions.add_client(session.sid, client.client_id)
    finally:
        services.close()
    # httpx logs every request it makes (the back-channel logout) at INFO.
    revoked = idhub_process("session", "revoke", "--user", "wang", config=cli_config)
    assert revoked.returncode == 0, revoked.stderr
    assert "ended 1 session(s)" in revoked.stdout and "1 delivered" in revoked.stdout
    assert revoked.stderr == ""
    reloaded = idhub_process("policy", "reload", config=cli_config)
    assert reloaded.returncode == 0 and "published" in reloaded.stdout
    assert reloaded.stderr == ""
    # -v asks for them
    verbose = idhub_process("-v", "policy", "reload", config=cli_config)
    assert "INFO idhub.authz" in verbose.stderr


def test_anything_unexpected_is_one_line_and_v_shows_where(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from idhub.cli._endings import ending_for

    try:
        {}["missing"]  # a real KeyError, with a traceback
    except KeyError as exc:
        quiet = ending_for(exc)
        assert capsys.readouterr().err == ""
        loud = ending_for(exc, verbose=True)
        shown = capsys.readouterr().err
    assert quiet.code == 2
    assert quiet.line == "error: unexpected KeyError: 'missing'; run with -v to see where"
    assert loud.line == "error: unexpected KeyError: 'missing'"
    assert shown.startswith("Traceback (most recent call last):") and "test_cli_endings" in shown
    assert ending_for(KeyboardInterrupt()).code == 130
    assert ending_for(BrokenPipeError()).line is None

"""`idhub backup` / `idhub restore`: tokens issued before a backup validate after a restore
into an empty database, the audit chain verifies, on SQLite, PostgreSQL and across the two;
a non-empty database, a tampered archive and another secret key are refused, changing nothing."""

from __future__ import annotations

import gzip
import io
import json
import secrets
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from idhub.adapters.db import audit_events, signing_keys, users
from tests.conftest import PG_SERVER, REPO, TEST_SECRET_KEY, CliResult, LiveServer
from tests.oidc_support import RP, issue_code, make_user, pkce_pair, web_client


@pytest.fixture
def new_database(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Empty databases (no tables at all) of either kind; PostgreSQL ones are dropped after."""
    made: list[str] = []

    def factory(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'restored-{len(made)}-{secrets.token_hex(2)}.db'}"
        name = f"idhub_restore_{secrets.token_hex(4)}"
        admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        made.append(name)
        return f"{PG_SERVER}/{name}"

    yield factory
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _config(tmp_path: Path, name: str, db_url: str, *, key: str = TEST_SECRET_KEY) -> Path:
    """A CLI config on `db_url`; the source ("src") reads the repository's policies."""
    policies = REPO / "policies" if name == "src" else tmp_path / name / "policies"
    var = tmp_path / f"{name}-var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(key + "\n", encoding="utf-8")
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n'
        f'[policy]\ndir = "{policies}"\nwatch = false\n',
        encoding="utf-8",
    )
    return config


def _issue(server: LiveServer) -> dict[str, str]:
    """A client-credentials token, and an access + refresh token from a code flow."""
    services = server.services
    _, batch_secret = services.clients.register(
        "batch", grant_types=["client_credentials"], scope="authz", allowed_audiences=["idhub"]
    )
    machine = httpx.post(
        server.url + "/token", data={"grant_type": "client_credentials"},
        auth=("batch", batch_secret),
    ).json()  # fmt: skip
    _, secret = web_client(services)
    user = make_user(services)
    verifier, challenge = pkce_pair()
    code = issue_code(services, "oa", user, challenge=challenge, scope="openid offline_access")
    person = httpx.post(
        server.url + "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP,
              "code_verifier": verifier},
        auth=("oa", secret),
    ).json()  # fmt: skip
    return {
        "machine": machine["access_token"],
        "access": person["access_token"],
        "refresh": person["refresh_token"],
        "secret": str(secret),
        "batch_secret": str(batch_secret),
    }


def _count(url: str, table: object) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]
    engine.dispose()
    return value


@pytest.mark.parametrize(
    ("source", "target"),
    [("sqlite", "sqlite"), ("postgresql", "postgresql"), ("sqlite", "postgresql")],
)
def test_tokens_from_before_the_backup_validate_after_the_restore(
    source: str,
    target: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    new_database: Callable[[str], str],
    make_live_server: Callable[..., LiveServer],
    run_cli: Callable[..., CliResult],
) -> None:
    if source == "sqlite":
        src_url: str = request.getfixturevalue("sqlite_db_url")
    else:
        src_url = new_database("postgresql")
    original = make_live_server(src_url)
    original.services.keys.ensure_active(lambda _line: None)
    tokens = _issue(original)
    archive = tmp_path / "idhub-backup.tar.gz"
    made = run_cli("backup", str(archive), config=_config(tmp_path, "src", src_url))
    assert made.code == 0, made.err
    assert "the secret key is not in the archive" in made.out
    assert archive.stat().st_mode & 0o077 == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"manifest.json", "db/audit_events.jsonl", "db/signing_keys.jsonl"} <= names
    assert "policies/model.conf" in names
    assert manifest["tables"]["signing_keys"] >= 2 and manifest["source_dialect"] == source
    assert TEST_SECRET_KEY not in archive.read_bytes().decode("latin-1")
    events_before = _count(src_url, audit_events)

    dst_url = new_database(target)
    dst_config = _config(tmp_path, "dst", dst_url)
    restored = run_cli("restore", str(archive), config=dst_config)
    assert restored.code == 0, restored.err
    assert f"audit chain verifies: {events_before} event(s)" in restored.out
    assert (tmp_path / "dst" / "policies" / "model.conf").read_bytes() == (
        REPO / "policies" / "model.conf"
    ).read_bytes()
    assert _count(dst_url, users) == _count(src_url, users) == 1
    assert _count(dst_url, signing_keys) == _count(src_url, signing_keys)

    # The same issuer in front of the restored database: what was issued before still works.
    again = make_live_server(dst_url, issuer=original.url)
    for name, client, secret in (
        ("machine", "batch", tokens["batch_secret"]),
        ("access", "oa", tokens["secret"]),
    ):
        answer = httpx.post(
            again.url + "/introspect", data={"token": tokens[name]}, auth=(client, secret)
        ).json()
        assert answer["active"] is True, name
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh"]}
    refreshed = httpx.post(again.url + "/token", data=refresh, auth=("oa", tokens["secret"]))
    assert refreshed.status_code == 200, refreshed.text
    assert again.services.access_tokens.verify(refreshed.json()["access_token"], audience="oa")
    # New rows get new ids (PostgreSQL's sequences moved past the restored ones).
    make_user(again.services, "lisi", employee_id="E1002")
    verified = run_cli("audit", "verify", config=dst_config)
    assert verified.code == 0, verified.out + verified.err


def test_restore_refuses_a_database_that_holds_anything(
    tmp_path: Path, sqlite_db_url: str, run_cli: Callable[..., CliResult],
    make_live_server: Callable[..., LiveServer],
) -> None:  # fmt: skip
    live = make_live_server(sqlite_db_url)
    make_user(live.services)
    config = _config(tmp_path, "src", sqlite_db_url)
    archive = tmp_path / "b.tar.gz"
    assert run_cli("backup", str(archive), config=config).code == 0
    before = _count(sqlite_db_url, audit_events)
    refused = run_cli("restore", str(archive), config=config)
    assert refused.code == 2
    assert "the database is not empty" in refused.err and "Traceback" not in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert _count(sqlite_db_url, users) == 1 and _count(sqlite_db_url, audit_events) == before


def _rewrite(archive: Path, target: Path, change: Callable[[str, bytes], bytes]) -> None:
    with tarfile.open(archive) as src, tarfile.open(target, "w:gz") as dst:
        for member in src.getmembers():
            data = change(member.name, src.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def test_a_tampered_archive_or_another_key_changes_nothing(
    tmp_path: Path, sqlite_db_url: str, run_cli: Callable[..., CliResult],
    make_live_server: Callable[..., LiveServer], new_database: Callable[[str], str],
) -> None:  # fmt: skip
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(live.services)
    archive = tmp_path / "b.tar.gz"
    assert run_cli("backup", str(archive), config=_config(tmp_path, "src", sqlite_db_url)).code == 0

    def edit_user(name: str, data: bytes) -> bytes:
        return data.replace(b"zhangsan", b"mallory!") if name == "db/users.jsonl" else data

    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(archive, tampered, edit_user)
    dst_url = new_database("sqlite")
    refused = run_cli("restore", str(tampered), config=_config(tmp_path, "dst", dst_url))
    assert refused.code == 2 and "checksum mismatch in db/users.jsonl" in refused.err
    # Not an archive at all.
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar"))
    assert (
        "not an idhub backup archive"
        in run_cli("restore", str(junk), config=_config(tmp_path, "dst", dst_url)).err
    )
    # The right archive under another secret key: nothing could be unsealed, so nothing is loaded.
    other = _config(tmp_path, "other", dst_url, key="another-secret-key-0123456789abcdefghijk")
    wrong_key = run_cli("restore", str(archive), config=other)
    assert wrong_key.code == 2 and "cannot be decrypted with this secret key" in wrong_key.err
    assert _count(dst_url, users) == 0
    ok = run_cli("restore", str(archive), config=_config(tmp_path, "dst", dst_url))
    assert ok.code == 0 and _count(dst_url, users) == 1

"""What scripts and admins read from the CLI: `--json` on `audit verify`, `policy test`,
`policy reload` and `sync status`; ISO 8601 times instead of epoch floats; usernames in the
audit listing where the actor is a known user (the chain itself keeps the `sub`)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType
from tests.conftest import REPO, CliResult
from tests.sso_support import cli_config_for

Run = Callable[..., CliResult]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_audit_verify_json(run_cli: Run, services: Services, tmp_path: Path, db_url: str) -> None:
    services.audit.record(EventType.USER_CREATED, actor=Actor("admin", "test"), target="x")
    config = cli_config_for(tmp_path, db_url)
    result = run_cli("audit", "verify", "--json", config=config)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["ok"] is True and report["live"]["ok"] is True
    assert report["live"]["checked"] >= 1 and report["live"]["problem"] is None
    head = report["live"]["head"]
    assert re.fullmatch(r"\d+:[0-9a-f]{64}", head)
    # a head the chain never had: not ok, exit 1, and still one JSON document
    wrong = f"{head.split(':')[0]}:{'0' * 64}"
    failed = run_cli("audit", "verify", "--json", "--head", wrong, config=config)
    assert failed.code == 1
    report = json.loads(failed.out)
    assert report["ok"] is False and report["heads"][0]["ok"] is False
    assert report["heads"][0]["problem"]


def test_policy_test_and_reload_json(run_cli: Run, cli_config: Path, tmp_path: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    ok = run_cli("policy", "test", "--json", config=cli_config)
    assert ok.code == 0, ok.err
    report = json.loads(ok.out)
    assert report["ok"] is True and report["failed"] == 0
    assert report["passed"] == len(report["cases"]) > 10
    assert all(c["passed"] and Path(c["file"]).is_file() and c["line"] > 0 for c in report["cases"])
    # one failing case
    broken = tmp_path / "broken"
    shutil.copytree(REPO / "policies", broken)
    case = broken / "tests" / "wrong_test.yaml"
    case.write_text(
        "cases:\n  - name: alice approves everything\n    user: alice\n    domain: reimburse\n"
        "    type: expense_report\n    action: approve\n    expect: allow\n",
        encoding="utf-8",
    )
    bad = run_cli("policy", "test", "--json", "--dir", str(broken), config=cli_config)
    assert bad.code == 1
    report = json.loads(bad.out)
    assert report["ok"] is False and report["failed"] == 1
    (failed,) = [c for c in report["cases"] if not c["passed"]]
    assert failed["file"] == str(case) and failed["line"] == 2 and failed["detail"]

    reloaded = run_cli("policy", "reload", "--json", config=cli_config)
    assert reloaded.code == 0, reloaded.err
    report = json.loads(reloaded.out)
    assert report["ok"] is True and report["published"] is True
    assert re.fullmatch(r"[0-9a-f]{12}", report["version"]) and report["tests_run"] > 10


def test_sync_status_json(run_cli: Run, cli_config: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    result = run_cli("sync", "status", "--json", config=cli_config)
    assert result.code == 0 and json.loads(result.out) == []


def test_client_show_prints_iso_times(run_cli: Run, cli_config: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    added = run_cli("client", "add", "oa", "--redirect-uri", "http://127.0.0.1:8001/cb",
                    "--json", config=cli_config)  # fmt: skip
    assert added.code == 0, added.err
    assert ISO.match(json.loads(added.out)["created_at"])
    shown = run_cli("client", "show", "oa", config=cli_config)
    assert shown.code == 0
    (created,) = [line for line in shown.out.splitlines() if line.startswith("created_at")]
    assert ISO.match(created.split()[-1]), created
    data = json.loads(run_cli("client", "show", "oa", "--json", config=cli_config).out)
    assert ISO.match(data["created_at"]) and ISO.match(data["secret_rotated_at"])


def test_audit_listing_names_the_user(
    run_cli: Run, services: Services, tmp_path: Path, db_url: str
) -> None:
    alice = services.identity.create_user(username="alice")
    services.audit.record(
        EventType.LOGIN_SUCCEEDED, actor=Actor("user", alice.sub), target=alice.sub
    )
    services.audit.record(EventType.LOGIN_FAILED, actor=Actor("user", "f" * 32), target="f" * 32)
    config = cli_config_for(tmp_path, db_url)
    listed = run_cli("audit", "search", config=config)
    assert listed.code == 0, listed.err
    (line,) = [row for row in listed.out.splitlines() if "login.succeeded" in row]
    assert "user:alice" in line and alice.sub not in line
    (unknown,) = [row for row in listed.out.splitlines() if "login.failed" in row]
    assert f"user:{'f' * 32}" in unknown  # not a known user: the id as recorded
    # filtering by what the listing shows
    found = json.loads(
        run_cli("audit", "search", "--actor", "user:alice", "--json", config=config).out
    )
    assert [e["event_type"] for e in found] == ["login.succeeded"]
    # the trail keeps the subject, never the name
    assert found[0]["actor_id"] == alice.sub and found[0]["target"] == alice.sub
    assert "alice" not in json.dumps(found[0])
    assert run_cli("audit", "verify", config=config).code == 0

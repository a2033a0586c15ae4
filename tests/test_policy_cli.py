"""`idhub policy check|test|explain|diff|reload` as an admin runs them, against a real SQLite
directory seeded like the demo company."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from idhub.adapters.db import policy_state
from idhub.bootstrap import Services
from idhub.config import load_settings
from tests.conftest import REPO, CliResult

Run = Callable[..., CliResult]


@pytest.fixture
def seeded(cli_config: Path) -> Path:
    services = Services(load_settings(cli_config))
    try:
        services.migrate()
        ident = services.identity
        alice = ident.create_user(username="alice", department_path="/总部/华东区/销售一部")
        bob = ident.create_user(username="bob", department_path="/总部/华东区")
        carol = ident.create_user(username="carol", department_path="/总部/财务部/费用核算组")
        dave = ident.create_user(username="dave", department_path="/总部/信息技术部")
        ident.set_department_manager("/总部/华东区", bob.id)
        ident.set_group_members(ident.ensure_group("财务审核组").id, [carol.id])
        ident.set_group_members(ident.ensure_group("系统管理员").id, [dave.id])
        ident.set_group_members(ident.ensure_group("审计组").id, [])
        ident.set_group_members(ident.ensure_group("档案管理组").id, [])
        del alice
    finally:
        services.close()
    return cli_config


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    target = tmp_path / "broken"
    shutil.copytree(REPO / "policies", target)
    csv = target / "reimburse.csv"
    text = csv.read_text(encoding="utf-8")
    csv.write_text(
        text + "p, employe, reimburse, expense_report, read, all, allow\n", encoding="utf-8"
    )
    return target


def line_count(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("\n")


def test_check_passes_on_the_shipped_policy_and_fails_with_file_line(
    run_cli: Run, seeded: Path, broken: Path
) -> None:
    ok = run_cli("policy", "check", config=seeded)
    assert ok.code == 0, ok.out + ok.err
    assert "0 error(s), 0 warning(s)" in ok.out
    bad = run_cli("policy", "check", "--dir", str(broken), config=seeded)
    assert bad.code == 1
    line = line_count(broken / "reimburse.csv")
    assert f"{broken / 'reimburse.csv'}:{line}: error: unknown role 'employe'" in bad.out
    as_json = run_cli("policy", "check", "--dir", str(broken), "--json", config=seeded)
    assert as_json.code == 1 and '"line": ' + str(line) in as_json.out


def test_check_warns_about_names_missing_from_the_directory(run_cli: Run, cli_config: Path) -> None:
    # an empty directory: every group and department named by assignments.yaml is unknown
    result = run_cli("policy", "check", config=cli_config)
    assert result.code == 0
    assert "assignments.yaml:" in result.out and "does not exist in the directory" in result.out
    strict = run_cli("policy", "check", "--strict", config=cli_config)
    assert strict.code == 1


def test_test_command_runs_the_policy_tests(run_cli: Run, seeded: Path, broken: Path) -> None:
    result = run_cli("policy", "test", "-v", config=seeded)
    assert result.code == 0, result.out
    assert "PASS" in result.out and " 0 failed" in result.out
    shutil.copytree(REPO / "policies", broken, dirs_exist_ok=True)  # repair
    tests = broken / "tests" / "reimburse_test.yaml"
    tests.write_text(
        tests.read_text(encoding="utf-8").replace(
            "name: alice cannot read erin's report\n    user: alice\n    domain: reimburse\n"
            "    type: expense_report\n    action: read\n    owner: erin\n"
            "    dept: /总部/华东区/销售二部\n    expect: deny",
            "name: alice cannot read erin's report\n    user: alice\n    domain: reimburse\n"
            "    type: expense_report\n    action: read\n    owner: erin\n"
            "    dept: /总部/华东区/销售二部\n    expect: allow",
        ),
        encoding="utf-8",
    )
    failed = run_cli("policy", "test", "--dir", str(broken), config=seeded)
    assert failed.code == 1
    assert f"FAIL {tests}:" in failed.out and "expected allow, got deny" in failed.out
    assert "1 failed" in failed.out


def test_explain_shows_roles_lines_and_the_winner(run_cli: Run, seeded: Path) -> None:
    result = run_cli(
        "policy",
        "explain",
        "bob",
        "reimburse",
        "expense_report",
        "approve",
        "--owner",
        "bob",
        "--dept",
        "/总部/华东区",
        config=seeded,
    )
    assert result.code == 0, result.err
    assert result.out.startswith("decision: DENY (denied by reimburse.csv:")
    assert "dept_manager: dept_manager [manager of /总部/华东区 (assignments.yaml:" in result.out
    assert "WINS" in result.out
    allowed = run_cli(
        "policy",
        "explain",
        "bob",
        "reimburse",
        "expense_report",
        "approve",
        "--owner",
        "alice",
        "--dept",
        "/总部/华东区/销售一部",
        config=seeded,
    )
    assert allowed.out.startswith("decision: ALLOW (allowed by reimburse.csv:13)")
    nothing = run_cli("policy", "explain", "bob", "erp", "voucher", "post", config=seeded)
    assert "decision: DENY (no rule matched)" in nothing.out
    unknown = run_cli("policy", "explain", "zed", "oa", "notice", "read", config=seeded)
    assert unknown.code == 2 and "no user 'zed'" in unknown.err


def test_diff_against_a_directory_and_a_git_revision(
    run_cli: Run, seeded: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "policies", repo / "policies")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=a@example.com", "-c", "user.name=a", "add", ".")
    git("-c", "user.email=a@example.com", "-c", "user.name=a", "commit", "-q", "-m", "v1")
    csv = repo / "policies" / "reimburse.csv"
    csv.write_text(
        csv.read_text(encoding="utf-8").replace(
            "p, dept_manager, reimburse, expense_report, approve, dept_tree, allow",
            "p, dept_manager, reimburse, expense_report, approve, dept, allow",
        ),
        encoding="utf-8",
    )
    diff = run_cli("policy", "diff", "--dir", str(repo / "policies"), "HEAD", config=seeded)
    assert diff.code == 0, diff.err
    assert "bob:" in diff.out
    assert "+ allow reimburse expense_report approve [dept:/总部/华东区]" in diff.out
    assert "- allow reimburse expense_report approve [dept_tree:/总部/华东区]" in diff.out
    assert "alice:" not in diff.out
    same = run_cli(
        "policy", "diff", "--dir", str(repo / "policies"), str(repo / "policies"), config=seeded
    )
    assert "no user gains or loses any permission" in same.out
    missing = run_cli(
        "policy", "diff", "--dir", str(repo / "policies"), "no-such-rev", config=seeded
    )
    assert missing.code == 2 and "cannot read 'no-such-rev' from git" in missing.err


def test_reload_publishes_only_a_good_policy(
    run_cli: Run, seeded: Path, broken: Path, tmp_path: Path
) -> None:
    good = run_cli("policy", "reload", config=seeded)
    assert good.code == 0, good.out + good.err
    assert "tests passed; published" in good.out
    services = Services(load_settings(seeded))
    try:
        with services.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(policy_state)).scalar() == 1
    finally:
        services.close()
    config = tmp_path / "broken.toml"
    config.write_text(
        seeded.read_text(encoding="utf-8").replace(str(REPO / "policies"), str(broken)),
        encoding="utf-8",
    )
    bad = run_cli("policy", "reload", config=config)
    assert bad.code == 1
    assert "reimburse.csv:" in bad.out and "policy rejected" in bad.out


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("reimburse.csv", "approve, dept_tree, allow", "approve, dept, allow"),
        ("roles.csv", "g, dept_manager, employee, *", "g, dept_manager, auditor, oa"),
        (
            "assignments.yaml",
            "{group: 财务审核组, role: finance_reviewer",
            "{group: 审计组, role: finance_reviewer",
        ),
        ("assignments.yaml", "- {role: dept_manager, domain: oa}", "- {role: auditor, domain: oa}"),
    ],
)
def test_diff_only_skips_users_whose_permissions_cannot_change(
    tmp_path: Path, file: str, old: str, new: str
) -> None:
    """The shortcut in `policy diff` never hides a change a full comparison would show."""
    from idhub.adapters.policy_files import load_policy_dir
    from idhub.cli.policy import _affected_users
    from idhub.core.authz.engine import Engine

    domains = ("oa", "reimburse", "erp", "archive", "idhub")
    edited = tmp_path / "edited"
    shutil.copytree(REPO / "policies", edited)
    path = edited / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    before, _ = load_policy_dir(REPO / "policies")
    after, _ = load_policy_dir(edited)
    assert before.fixture is not None
    a = Engine(before, before.fixture, domains)
    b = Engine(after, before.fixture, domains)
    changed = {
        u
        for u, user in before.fixture.users.items()
        if not user.disabled and a.permissions(u) != b.permissions(u)
    }
    assert changed, "the edit should change someone's permissions"
    affected = set(_affected_users(a, b))
    assert changed <= affected
    assert len(affected) < len(before.fixture.users)


@pytest.mark.parametrize("name", ["catalog.yaml", "assignments.yaml", "tests/directory.yaml"])
def test_a_file_that_does_not_parse_is_reported_alone(
    run_cli: Run, seeded: Path, tmp_path: Path, name: str
) -> None:
    # Without it, every role, group or user it declares is "unknown" a hundred times over.
    target = tmp_path / "unparsable"
    shutil.copytree(REPO / "policies", target)
    path = target / name
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] += " : : ["
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for command in ("check", "test"):
        result = run_cli("policy", command, "--dir", str(target), config=seeded)
        assert result.code == 1
        reported = [line for line in result.out.splitlines() if ": error: " in line]
        assert reported == [f"{path}:5: error: not valid YAML: mapping values are not allowed "
                            "in this context"], result.out  # fmt: skip
        assert ": warning: " not in result.out
    # a server's reload reports the same one line
    services = Services(load_settings(seeded, env={"IDHUB_POLICY_DIR": str(target)}))
    try:
        outcome = services.authz.reload(trigger="test")
    finally:
        services.close()
    assert not outcome.ok and len(outcome.errors) == 1 and not outcome.warnings

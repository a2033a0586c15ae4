"""Reading policy directories and checking them: every problem comes back with file:line, and
the shipped default policy is clean and passes its own tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from idhub.adapters.policy_files import load_policy_dir
from idhub.core.authz.checks import check_policy
from idhub.core.authz.model import DirectorySnapshot, DirectoryUser, Issue
from idhub.core.authz.rule_table import RuleTable
from idhub.core.authz.testing import run_policy_tests

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "policies"
DOMAINS = ("oa", "reimburse", "erp", "archive", "idhub")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def issues_of(root: Path, directory: DirectorySnapshot | None = None) -> list[Issue]:
    policy, issues = load_policy_dir(root)
    return issues + check_policy(policy, DOMAINS, directory or policy.fixture)


def located(issues: list[Issue], level: str = "error") -> list[str]:
    return [f"{i.source}: {i.message}" for i in issues if i.level == level]


def append(path: Path, text: str) -> int:
    """Appends lines; returns the line number of the first one."""
    before = path.read_text(encoding="utf-8")
    path.write_text(before + text, encoding="utf-8")
    return before.count("\n") + 1


def test_shipped_policy_is_clean_and_its_tests_pass() -> None:
    policy, _ = load_policy_dir(SHIPPED)
    issues = issues_of(SHIPPED)
    assert located(issues) == []
    assert located(issues, "warning") == []
    results = run_policy_tests(policy, DOMAINS)
    assert len(results) >= 25
    assert [str(r) for r in results if not r.passed] == []
    assert {c.domain for c in policy.cases} == set(DOMAINS)


def test_bad_csv_lines_are_reported_with_file_and_line(policy_dir: Path) -> None:
    line = append(
        policy_dir / "reimburse.csv",
        "p, employee, reimburse, expense_report, read, self\n"
        "p, employee, reimburse, expense_report, read, dept:总部, allow\n"
        "p, employee, reimburse, expense_report, read, all, permit\n"
        "x, nonsense\n"
        "g, employee, user:bob, oa\n",
    )
    errors = located(issues_of(policy_dir))
    assert any(e.startswith(f"reimburse.csv:{line}: a p line has 6 fields") for e in errors)
    assert any(e.startswith(f"reimburse.csv:{line + 1}: department scope") for e in errors)
    assert any(
        e.startswith(f"reimburse.csv:{line + 2}: effect must be allow or deny") for e in errors
    )
    assert any(e.startswith(f"reimburse.csv:{line + 3}: a line starts with p or g") for e in errors)
    assert any(
        e.startswith(f"reimburse.csv:{line + 4}: 'user:bob' is not a role name") for e in errors
    )


def test_unknown_references(policy_dir: Path) -> None:
    line = append(
        policy_dir / "oa.csv",
        "p, employe, oa, notice, read, all, allow\n"
        "p, employee, payroll, notice, read, all, allow\n"
        "p, employee, oa, notices, read, all, allow\n"
        "p, employee, oa, notice, approve, all, allow\n"
        "g, user:alice, finance_boss, oa\n",
    )
    errors = located(issues_of(policy_dir))
    assert f"oa.csv:{line}: unknown role 'employe' (declare it in catalog.yaml)" in errors
    assert any(e.startswith(f"oa.csv:{line + 1}: unknown domain 'payroll'") for e in errors)
    assert f"oa.csv:{line + 2}: unknown resource type 'notices' in domain 'oa'" in errors
    assert any(
        e.startswith(f"oa.csv:{line + 3}: unknown action 'approve' for 'notice'") for e in errors
    )
    assert any(e.startswith(f"oa.csv:{line + 4}: unknown role 'finance_boss'") for e in errors)


def test_cycles_contradictions_and_rules_that_never_match(policy_dir: Path) -> None:
    line = append(
        policy_dir / "roles.csv",
        "g, employee, dept_manager, oa\n",
    )
    contra = append(
        policy_dir / "oa.csv",
        "p, employee, oa, notice, read, all, deny\np, auditor, oa, notice, publish, all, allow\n",
    )
    issues = issues_of(policy_dir)
    errors = located(issues)
    assert any(e.startswith(f"roles.csv:{line}: role inheritance cycle in oa") for e in errors)
    assert any(
        e.startswith(f"oa.csv:{contra}: allow and deny on the same tuple") and "oa.csv:" in e
        for e in errors
    )
    # auditor is assigned from group 审计组 in every domain, so that line can match;
    # a role nobody holds in oa cannot.
    append(policy_dir / "oa.csv", "p, finance, oa, notice, publish, all, allow\n")
    warnings = located(issues_of(policy_dir), "warning")
    assert any("nobody can hold role 'finance' in oa" in w for w in warnings)


def test_directory_names_that_do_not_exist_are_warnings(policy_dir: Path) -> None:
    directory = DirectorySnapshot(
        users={"alice": DirectoryUser("alice", "s", "/总部")},
        departments={"/总部": None},
        groups=frozenset({"财务审核组"}),
    )
    issues = issues_of(policy_dir, directory)
    assert located(issues) == []
    warnings = located(issues, "warning")
    assert any("assignments.yaml:" in w and "'审计组' does not exist" in w for w in warnings)
    assert any("department /总部/财务部 does not exist" in w for w in warnings)


def test_model_must_be_idhubs_model(policy_dir: Path) -> None:
    model = policy_dir / "model.conf"
    text = model.read_text(encoding="utf-8")
    lines = text.splitlines()
    number = next(i for i, ln in enumerate(lines, 1) if ln.startswith("e = "))
    model.write_text(
        text.replace(
            "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))",
            "e = some(where (p.eft == allow))",
        ),
        encoding="utf-8",
    )
    errors = located(issues_of(policy_dir))
    assert any(e.startswith(f"model.conf:{number}: [policy_effect] e differs") for e in errors)


def test_yaml_errors_point_at_the_line(policy_dir: Path) -> None:
    path = policy_dir / "assignments.yaml"
    line = append(path, "groups:\n  - {group: x, role: admin, domain: oa\n")
    errors = located(issues_of(policy_dir))
    assert any(e.startswith("assignments.yaml:") and "not valid YAML" in e for e in errors)
    number = int(next(e for e in errors if "not valid YAML" in e).split(":")[1])
    assert number >= line
    path.write_text(
        "groups:\n  - {group: x, role: admin, domain: oa, colour: red}\n", encoding="utf-8"
    )
    assert "assignments.yaml:2: unknown key 'colour'" in located(issues_of(policy_dir))


def test_failing_policy_test_is_reported_with_its_location(policy_dir: Path) -> None:
    line = append(
        policy_dir / "tests" / "reimburse_test.yaml",
        "  - name: alice approves her own report (wrong on purpose)\n"
        "    user: alice\n    domain: reimburse\n    type: expense_report\n"
        "    action: approve\n    owner: alice\n    dept: /总部/华东区/销售一部\n"
        "    expect: allow\n",
    )
    policy, issues = load_policy_dir(policy_dir)
    assert located(issues) == []
    failed = [r for r in run_policy_tests(policy, DOMAINS) if not r.passed]
    assert len(failed) == 1
    assert str(failed[0].case.source) == f"tests/reimburse_test.yaml:{line}"
    assert "expected allow, got deny (denied by reimburse.csv:" in failed[0].detail


def test_field_texts_seen_on_accepted_lines_are_reused_but_still_checked_per_column(
    policy_dir: Path,
) -> None:
    """The loader remembers each field text of an accepted `p` line with its number: a later
    line repeating the texts gives the same line as reading it afresh (names canonical, in
    any spelling), and a text accepted in one column is not taken for valid in another
    (a `user:` subject as a domain, a scope text as an effect)."""
    line = append(
        policy_dir / "reimburse.csv",
        "p, user:Bob, reimburse, expense_report, read, self, allow\n"
        "p,user:Bob,REIMBURSE,expense_report,read,self,deny\n"
        "p, user:Bob, reimburse, expense_report, read, self, allow\n"
        "p, user:Bob, user:Bob, expense_report, read, self, allow\n"
        "p, user:Bob, reimburse, expense_report, read, self, self\n"
        "p, user:Bob, reimburse, expense_report, read, dept:总部, allow\n",
    )
    policy, issues = load_policy_dir(policy_dir)
    errors = [f"{i.source}: {i.message}" for i in issues if i.level == "error"]
    assert errors == [
        f"reimburse.csv:{line + 3}: domain 'user:bob' is not a valid name",
        f"reimburse.csv:{line + 4}: effect must be allow or deny, not 'self'",
        f"reimburse.csv:{line + 5}: department scope 'dept:总部' must look like "
        "dept:/总部/华东区: department path '总部' must start with / (like /总部/华东区)",
    ]
    mine = [r for r in policy.rules if r.subject == "user:bob"]
    assert [(r.domain, r.obj, r.act, str(r.scope), r.effect, r.source.line) for r in mine] == [
        ("reimburse", "expense_report", "read", "self", "allow", line),
        ("reimburse", "expense_report", "read", "self", "deny", line + 1),
        ("reimburse", "expense_report", "read", "self", "allow", line + 2),
    ]
    # The same table as numbering the same rules one field at a time.
    assert RuleTable.from_rules(tuple(policy.rules)).columns() == policy.rules.columns()

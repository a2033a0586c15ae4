"""Typos an admin makes are refused with a sentence saying what is wrong, never accepted
quietly: an unknown department for a new user, a resource type or action the catalog does not
declare (in `policy explain` and in the policy's own tests), an issuer without scheme or host."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from idhub.bootstrap import Services
from idhub.config import load_settings
from tests.conftest import REPO, CliResult
from tests.sso_support import cli_config_for

Run = Callable[..., CliResult]


def test_an_unknown_department_is_refused_unless_asked_to_create_it(
    run_cli: Run, services: Services, tmp_path: Path, db_url: str
) -> None:
    services.identity.ensure_department("/总部/财务部")
    config = cli_config_for(tmp_path, db_url)
    refused = run_cli("user", "add", "li", "--no-password", "--department", "总部/不存在",
                      config=config)  # fmt: skip
    assert refused.code == 2 and refused.out == ""
    assert refused.err == (
        "idhub: error: no department /总部/不存在; the nearest existing one is /总部 (check the "
        "spelling, or pass --create-department to create it)\n"
    )
    assert services.identity.get_department("/总部/不存在") is None
    assert services.identity.get_user_by_username("li") is None
    # an existing one, in any spelling normalise_department_path accepts
    known = run_cli("user", "add", "li", "--no-password", "--department", "总部/财务部/",
                    config=config)  # fmt: skip
    assert known.code == 0, known.err
    user = services.identity.get_user_by_username("li")
    assert user is not None and user.department_path == "/总部/财务部"
    created = run_cli("user", "add", "wu", "--no-password", "--department", "/总部/新部门",
                      "--create-department", config=config)  # fmt: skip
    assert created.code == 0, created.err
    assert services.identity.get_department("/总部/新部门") is not None


def _directory(config: Path) -> None:
    services = Services(load_settings(config))
    try:
        services.migrate()
        services.identity.create_user(username="alice", department_path="/总部/华东区/销售一部")
    finally:
        services.close()


def test_explain_names_a_type_or_action_the_catalog_does_not_declare(
    run_cli: Run, cli_config: Path
) -> None:
    _directory(cli_config)
    typo = run_cli("policy", "explain", "alice", "reimburse", "expense_reprot", "read",
                   config=cli_config)  # fmt: skip
    assert typo.code == 2 and typo.out == "" and typo.err.count("\n") == 1
    assert "resource type 'expense_reprot' is not in the catalog for domain 'reimburse'" in typo.err
    assert "did you mean 'expense_report'?" in typo.err
    action = run_cli("policy", "explain", "alice", "reimburse", "expense_report", "aprove",
                     config=cli_config)  # fmt: skip
    assert action.code == 2 and "action 'aprove' is not declared" in action.err
    assert "did you mean 'approve'?" in action.err
    # the catalog's spelling rules apply: full-width or upper case is the same type
    ok = run_cli("policy", "explain", "alice", "reimburse", "EXPENSE_REPORT", "read",
                 config=cli_config)  # fmt: skip
    assert ok.code == 0 and ok.out.startswith("decision: "), ok.err


def test_a_policy_test_on_an_undeclared_type_is_an_error(
    run_cli: Run, cli_config: Path, tmp_path: Path
) -> None:
    # `expect: deny` on a misspelt type passes for ever while proving nothing.
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    case = target / "tests" / "typo_test.yaml"
    case.write_text(
        "cases:\n"
        "  - name: alice cannot approve\n"
        "    user: alice\n    domain: reimburse\n"
        "    type: expense_reprot\n    action: approve\n    expect: deny\n",
        encoding="utf-8",
    )
    result = run_cli("policy", "test", "--dir", str(target), config=cli_config)
    assert result.code == 1
    assert (
        f"{case}:2: error: test 'alice cannot approve': resource type 'expense_reprot' is not "
        "in the catalog for domain 'reimburse'; did you mean 'expense_report'?"
    ) in result.out


def test_an_issuer_needs_a_scheme_and_a_host(run_cli: Run, cli_config: Path) -> None:
    text = cli_config.read_text(encoding="utf-8")
    for bad in ("idhub.example.com", "https://", "ftp://idhub.example.com", "https://h/?a=1"):
        cli_config.write_text(text + f'\n[server]\nissuer = "{bad}"\n', encoding="utf-8")
        result = run_cli("config", "check", config=cli_config)
        assert result.code == 2 and result.out == "", bad
        line = text.count("\n") + 3
        assert result.err.startswith(f"idhub: error: {cli_config}:{line}: [server] issuer "), bad
    for good in ("https://idhub.example.com", "http://127.0.0.1:8000", "https://h.example/sso"):
        cli_config.write_text(text + f'\n[server]\nissuer = "{good}"\n', encoding="utf-8")
        assert run_cli("config", "check", config=cli_config).code == 0, good


def test_without_an_issuer_it_follows_the_port(tmp_path: Path) -> None:
    settings = load_settings(None, env={"IDHUB_PORT": "8010"}, cwd=tmp_path)
    assert settings.server.issuer == "http://127.0.0.1:8010"
    settings = load_settings(None, env={"IDHUB_PORT": "8010", "IDHUB_ISSUER": "https://sso.example"},
                             cwd=tmp_path)  # fmt: skip
    assert settings.server.issuer == "https://sso.example"

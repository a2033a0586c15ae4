"""`idhub department ...` and `idhub group ...` through the real CLI on SQLite and PostgreSQL:
every command in text and `--json`, every refusal as one line on stderr with exit code 2 and
nothing changed, typos in the command refused, and `idhub audit verify` passing afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from idhub.bootstrap import Services
from idhub.core.authz.decisions import Question
from tests.conftest import CliResult
from tests.sso_support import cli_config_for

Run = Callable[..., CliResult]


@pytest.fixture
def config(services: Services, tmp_path: Path, db_url: str) -> Path:
    services.migrate()
    ident = services.identity
    ident.create_user(username="alice", department_path="/总部/华东区/销售一部")
    ident.create_user(username="bob", department_path="/总部/华东区")
    ident.create_user(username="ivan")
    ident.set_disabled(ident.require_user("ivan").id, True, reason="left")
    ident.ensure_department("/Finance/AP", source="ldap:corp")
    ident.create_user(username="lin", source="ldap:corp", external_id="u-lin")
    ident.ensure_group("ldap-admins", source="ldap:corp")
    return cli_config_for(tmp_path, db_url)


def refused(result: CliResult, line: str) -> None:
    """A refusal: exit 2, nothing on stdout, exactly this one line on stderr."""
    assert (result.code, result.out) == (2, ""), result
    assert result.err == f"idhub: error: {line}\n"


def test_department_commands(run_cli: Run, config: Path, services: Services) -> None:
    added = run_cli("department", "add", "/总部/华东区/销售二部", config=config)
    assert (added.code, added.out) == (0, "added department /总部/华东区/销售二部\n"), added.err
    as_json = json.loads(run_cli("department", "add", "/总部/华北区", "--json", config=config).out)
    assert as_json == {
        "path": "/总部/华北区",
        "name": "华北区",
        "parent": None,  # the parent's path is only given by `list`
        "source": "local",
        "manager": None,
        "users": 0,
    }
    manager = run_cli("department", "set-manager", "/总部/华东区", "BOB", config=config)
    assert manager.out == "manager of /总部/华东区: bob (was none)\n", manager.err
    same = run_cli("department", "set-manager", "/总部/华东区", "bob", config=config)
    assert same.out == "/总部/华东区 is managed by bob already; nothing changed\n"

    moved = run_cli("department", "move", "总部/华东区", "/总部/华北区", config=config)
    assert moved.out == (
        "moved /总部/华东区 to /总部/华北区/华东区 (3 department(s) re-pathed; "
        "2 user(s) moved with them)\n"
        "note: policies name departments by path: `idhub policy check` lists the old ones\n"
    ), moved.err
    assert services.identity.require_user("alice").department_path == "/总部/华北区/华东区/销售一部"
    renamed = run_cli(
        "department", "move", "/总部/华北区/华东区", "/", "--name", "华东", "--json", config=config
    )
    assert json.loads(renamed.out) == {
        "before": "/总部/华北区/华东区",
        "after": "/华东",
        "departments": 3,
        "users": 2,
    }

    listing = json.loads(run_cli("department", "list", "--json", config=config).out)
    by_path = {d["path"]: d for d in listing}
    assert by_path["/华东"]["manager"] == "bob" and by_path["/华东"]["users"] == 1
    assert by_path["/华东/销售一部"]["parent"] == "/华东"
    assert by_path["/Finance/AP"]["source"] == "ldap:corp"
    tree = run_cli("department", "list", "--tree", config=config).out
    assert "Finance  (ldap:corp)\n  AP  (ldap:corp)\n" in tree
    assert "华东  (manager bob, 1 user(s))\n  销售一部  (1 user(s))\n  销售二部\n" in tree
    table = run_cli("department", "list", config=config).out
    assert table.splitlines()[0].split() == ["path", "source", "manager", "users"]

    cleared = run_cli("department", "set-manager", "/华东", "--clear", "--json", config=config)
    assert json.loads(cleared.out) == {
        "path": "/华东",
        "manager": None,
        "before": "bob",
        "changed": True,
    }
    run_cli("department", "add", "/总部/空", config=config)
    gone = run_cli("department", "remove", "/总部/空", config=config)
    assert gone.out == "removed department /总部/空\n"
    assert run_cli("audit", "verify", config=config).code == 0
    found = run_cli("audit", "search", "--type", "directory.*", "--json", config=config)
    kinds = [e["event_type"] for e in json.loads(found.out)]
    assert sorted(set(kinds)) == [
        "directory.department_added",
        "directory.department_manager_set",
        "directory.department_moved",
        "directory.department_removed",
    ]
    assert {e["actor_type"] + ":" + e["actor_id"] for e in json.loads(found.out)} == {"admin:cli"}


def test_department_refusals_are_one_line_and_change_nothing(
    run_cli: Run, config: Path, services: Services
) -> None:
    run_cli("department", "add", "/总部/华东区/销售一部/一组", config=config)
    counter = services.directory_store.directory_counter()
    cases = [
        (
            ("add", "/总部/没有/小组"),
            "no parent department /总部/没有 for /总部/没有/小组 (add /总部/没有 first)",
        ),
        (("add", "/总部/华东区"), "department /总部/华东区 already exists"),
        (
            ("add", "/总部/華東區/销售一部/一组"),
            "no parent department /总部/華東區/销售一部 for "
            "/总部/華東區/销售一部/一组 (add /总部/華東區/销售一部 first)",
        ),
        (
            ("move", "/总部/华东区", "/总部/华东区/销售一部/一组"),
            "department /总部/华东区 cannot move under /总部/华东区/销售一部/一组, one of its own "
            "departments",
        ),
        (("move", "/总部", "/总部"), "department /总部 cannot move under itself"),
        (
            ("move", "/Finance/AP", "/总部"),
            "department /Finance/AP is owned by ldap:corp; change it there",
        ),
        (
            ("move", "/总部/华东区", "/总部/华北"),
            "no department /总部/华北; the nearest existing one is /总部",
        ),
        (
            ("set-manager", "/Finance/AP", "bob"),
            "department /Finance/AP is owned by ldap:corp; change it there",
        ),
        (("set-manager", "/总部/华东区", "nobody"), "no user named 'nobody'"),
        (("set-manager", "/总部/华东区", "ivan"), "user ivan is disabled; a manager must not be"),
        (("set-manager", "/总部/华东区"), "give either a USERNAME or --clear"),
        (("set-manager", "/总部/华东区", "bob", "--clear"), "give either a USERNAME or --clear"),
        (
            ("remove", "/总部/华东区"),
            "department /总部/华东区 still has 1 department(s) below "
            "it (/总部/华东区/销售一部); move or remove them first",
        ),
        (
            ("remove", "/Finance/AP"),
            "department /Finance/AP is owned by ldap:corp; change it there",
        ),
        (("add", "/总部/a\tb"), "department path '/总部/a\\tb' contains control characters"),
    ]
    for args, line in cases:
        refused(run_cli("department", *args, config=config), line)
    assert services.directory_store.directory_counter() == counter
    assert services.identity.get_department("/总部/华东区") is not None
    # A typo in the command itself is refused by the parser, with its usage.
    typo = run_cli("department", "mvoe", "/总部/华东区", "/", config=config)
    assert typo.code == 2 and "invalid choice: 'mvoe'" in typo.err and typo.out == ""
    assert run_cli("audit", "verify", config=config).code == 0


def test_group_commands_and_refusals(run_cli: Run, config: Path, services: Services) -> None:
    added = run_cli("group", "add", "项目组", config=config)
    assert added.out == "added group 项目组\n", added.err
    refused(run_cli("group", "add", "项目组", config=config), "group 项目组 already exists")
    refused(
        run_cli("group", "add", "LDAP-ADMINS", config=config),
        "group ldap-admins already exists (owned by ldap:corp)",
    )
    members = run_cli("group", "add-member", "项目组", "alice", "LIN", config=config)
    assert members.out == "added to 项目组: alice, lin\n", members.err
    again = run_cli("group", "add-member", "项目组", "alice", "bob", "--json", config=config)
    assert json.loads(again.out) == {"group": "项目组", "added": ["bob"], "unchanged": ["alice"]}
    note = run_cli("group", "add-member", "项目组", "bob", config=config)
    assert note.out == "note: bob is already a member of 项目组; nothing changed for them\n"
    refused(
        run_cli("group", "add-member", "项目组", "ivan", "nobody", config=config),
        "no user named 'nobody'",
    )
    refused(
        run_cli("group", "add-member", "ldap-admins", "alice", config=config),
        "group ldap-admins is owned by ldap:corp; change it there",
    )
    refused(
        run_cli("group", "remove-member", "ldap-admins", "alice", config=config),
        "group ldap-admins is owned by ldap:corp; change it there",
    )
    refused(run_cli("group", "show", "nope", config=config), "no group named 'nope'")
    # Typos in a name: refused, with the close name that exists.
    refused(
        run_cli("group", "add-member", "项目组", "bob", "alcie", config=config),
        "no user named 'alcie' (did you mean 'alice'?)",
    )
    refused(
        run_cli("group", "show", "ldap-admin", config=config),
        "no group named 'ldap-admin' (did you mean 'ldap-admins'?)",
    )

    shown = json.loads(run_cli("group", "show", "项目组", "--json", config=config).out)
    assert shown["source"] == "local"
    assert [(m["username"], m["source"]) for m in shown["members"]] == [
        ("alice", "local"),
        ("bob", "local"),
        ("lin", "ldap:corp"),
    ]
    text = run_cli("group", "show", "项目组", config=config).out
    assert text.startswith("name: 项目组\nsource: local\nmembers: 3\n") and "ldap:corp" in text
    listing = json.loads(run_cli("group", "list", "--json", config=config).out)
    assert listing == [
        {"name": "ldap-admins", "source": "ldap:corp", "members": 0},
        {"name": "项目组", "source": "local", "members": 3},
    ]
    assert "项目组" in run_cli("group", "list", config=config).out

    removed = run_cli("group", "remove-member", "项目组", "bob", "ivan", config=config)
    assert removed.out == (
        "removed from 项目组: bob\nnote: ivan is not a member of 项目组; nothing changed for them\n"
    )
    refused(
        run_cli("group", "remove", "ldap-admins", config=config),
        "group ldap-admins is owned by ldap:corp; change it there",
    )
    gone = run_cli("group", "remove", "项目组", config=config)
    assert gone.out == "removed group 项目组 (2 membership(s) ended)\n"
    assert services.identity.user_groups(services.identity.require_user("alice").id) == []
    assert run_cli("group", "add-member", "项目组", config=config).code == 2  # no USER given
    assert run_cli("audit", "verify", config=config).code == 0
    found = json.loads(
        run_cli("audit", "search", "--type", "directory.*", "--json", config=config).out
    )
    assert len([e for e in found if e["event_type"] == "directory.group_member_added"]) == 3


def test_a_serving_policy_engine_sees_a_manager_set_by_the_cli(
    run_cli: Run, config: Path, services: Services
) -> None:
    """The admin runs the command beside a running server: the server's policy engine picks
    the change up on its next directory poll, as after a sync, without a restart."""
    question = Question(
        domain="reimburse",
        type="expense_report",
        action="approve",
        user="bob",
        owner="alice",
        dept="/总部/华东区/销售一部",
    )
    assert not services.decisions.current().decide(question).allowed  # engine built now
    done = run_cli("department", "set-manager", "/总部/华东区", "bob", config=config)
    assert done.code == 0, done.err
    services.authz.poll_once()  # the policy-poll job's round
    assert services.decisions.current().decide(question).allowed
    run_cli("department", "set-manager", "/总部/华东区", "--clear", config=config)
    services.authz.poll_once()
    assert not services.decisions.current().decide(question).allowed

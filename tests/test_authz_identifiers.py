"""Decisions that cannot be talked round: every identifier is compared in one canonical
spelling (core/identifiers.py), department paths segment by segment, and an owner nobody is
cannot slip past a deny on the user's own records. Runs on the shipped policy and its test
directory, without HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from idhub.adapters.policy_files import load_policy_dir
from idhub.core.audit import Actor, RequestContext
from idhub.core.authz.build import prepare_policy
from idhub.core.authz.decisions import (
    Asker,
    Decisions,
    PolicyAnswers,
    Question,
    canonical_question,
)
from idhub.core.authz.engine import Decision, Engine
from idhub.core.authz.model import DirectorySnapshot, DirectoryUser, parse_scope
from idhub.core.identifiers import (
    canonical_name,
    canonical_path,
    canonical_sub,
    canonical_subject,
    is_under,
)
from idhub.errors import AccessDenied, InvalidInput
from idhub.sdk import identifiers as sdk_identifiers
from tests.conftest import REPO

DOMAINS = ("oa", "reimburse", "erp", "archive", "idhub")
EAST = "/总部/华东区"
SALES1 = "/总部/华东区/销售一部"
# bob manages 华东区; each spelling below is bob to a person reading it.
BOB_SPELLINGS = ("Bob", "BOB", " bob", "bob ", "\u3000bob\u3000", "ｂｏｂ", "Ｂｏｂ", "b\u200bob")


class Source:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.recorded: list[Any] = []

    def status(self) -> dict[str, Any]:
        return {}

    def record_decisions(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> int:
        self.recorded.extend(decisions)
        return len(decisions)

    def decision_events(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> list[Any]:
        return list(decisions)

    def append_decision_events(self, events: Sequence[Any]) -> None:
        self.recorded.extend(events)


@pytest.fixture(scope="module")
def engine() -> Engine:
    policy, issues = load_policy_dir(REPO / "policies")
    assert not [i for i in issues if i.level == "error"]
    assert policy.fixture is not None
    return Engine(policy, policy.fixture, DOMAINS)


@pytest.fixture
def answers(engine: Engine) -> PolicyAnswers:
    source = Source(engine)
    return Decisions(lambda: source).current()


def approve(**fields: str) -> Question:
    return Question(domain="reimburse", type="expense_report", action="approve", **fields)


# ---------------------------------------------------------------------- the canonical form


def test_names_fold_width_case_spaces_and_invisible_characters() -> None:
    for spelling in BOB_SPELLINGS:
        assert canonical_name(spelling) == "bob", spelling
    assert canonical_name("ＦＩＮＡＮＣＥ_Reviewer") == "finance_reviewer"
    assert canonical_name("Straße") == "strasse"
    assert canonical_name("财务审核组 ") == "财务审核组"
    assert canonical_name("") == ""
    assert canonical_subject(" USER:Ｂｏｂ") == "user:bob"
    assert canonical_subject("user: bob") == "user:bob"
    assert canonical_subject("Dept_Manager") == "dept_manager"
    # OIDC subjects are opaque and case-sensitive: trimmed only.
    assert canonical_sub(" AbC ") == "AbC"


def test_department_paths_are_segments_never_resolved() -> None:
    assert canonical_path(" /总部/ 华东区 /Sales ") == "/总部/华东区/sales"
    assert canonical_path("/ＨＱ/ｓａｌｅｓ") == "/hq/sales"
    assert canonical_path("") == ""
    for bad in (
        "/总部/华东区/../财务部",
        "/总部/./华东区",
        "/总部//华东区",
        "/总部/华东区/",
        "/",
        "总部/华东区",
        "/总部/华东区/．．",  # full-width dots are dots too
        "/总部/华东区／..／财务部",  # and a full-width solidus is a separator
        "/总部/\x00",
    ):
        with pytest.raises(InvalidInput):
            canonical_path(bad)
    assert is_under("/总部/华东区/销售一部", EAST) and is_under(EAST, EAST)
    assert not is_under("/总部/华东", EAST) and not is_under(EAST, "/总部/华东")
    assert not is_under("/总部/华东区二部", EAST)
    assert not is_under("", EAST) and not is_under(EAST, "")


def test_the_sdk_spells_names_and_paths_as_the_server_does() -> None:
    samples = [*BOB_SPELLINGS, "Straße", "ＦＩＮＡＮＣＥ", "财务审核组\u200b", " x "]
    for text in samples:
        assert sdk_identifiers.canonical_name(text) == canonical_name(text)
    for path in (" /总部/ 华东区 /Sales ", "/ＨＱ/ｓａｌｅｓ", ""):
        assert sdk_identifiers.canonical_path(path) == canonical_path(path)
    for bad in ("/总部/华东区/../财务部", "/a//b", "/a/", "a"):
        with pytest.raises(ValueError):
            sdk_identifiers.canonical_path(bad)


def test_scopes_in_policy_lines_are_canonical_paths() -> None:
    assert parse_scope(" DEPT:/总部/ 华东区 ").path == EAST
    assert parse_scope("Dept_Tree").kind == "dept_tree"
    with pytest.raises(ValueError, match=r"'\.\.' segment"):
        parse_scope("dept:/总部/华东区/..")


# ---------------------------------------------------------------------- the reported bypasses


def test_nobody_approves_their_own_report_however_the_owner_is_spelled(
    answers: PolicyAnswers,
) -> None:
    mine = answers.decide(approve(user="bob", owner="bob", dept=EAST))
    assert not mine.allowed and mine.reason.startswith("denied by reimburse.csv:")
    for spelling in BOB_SPELLINGS:
        answer = answers.decide(approve(user="bob", owner=spelling, dept=EAST))
        assert not answer.allowed, spelling
        assert answer.reason == mine.reason
    # ... and however bob himself or the request's names are spelled.
    shouted = Question(
        domain=" REIMBURSE",
        type="Expense_Report",
        action="ＡＰＰＲＯＶＥ",
        user="Ｂｏｂ",
        owner="BOB",
    )
    assert not answers.decide(shouted).allowed
    # alice's report in 华东区 is bob's to approve, in any spelling of hers.
    assert answers.decide(approve(user="BOB", owner=" Alice ", dept=SALES1)).allowed


def test_the_engine_itself_canonicalises_every_request(engine: Engine) -> None:
    """The CLI, policy tests and anything else calling the engine get the same protection."""
    check = engine.check
    assert not check("user:bob", "reimburse", "expense_report", "approve", "Bob", EAST).allowed
    assert not check("USER:ｂｏｂ", "Reimburse", "EXPENSE_REPORT", "approve", "bob", EAST).allowed
    assert check("user:bob", "reimburse", "expense_report", "approve", "alice", SALES1).allowed
    assert engine.roles_for("ＢＯＢ", "REIMBURSE") == engine.roles_for("bob", "reimburse")


def test_an_unknown_or_missing_owner_does_not_slip_past_a_deny_on_own_records(
    answers: PolicyAnswers,
) -> None:
    # "bobby" is nobody: the record might be bob's own, and bob may not approve his own.
    for owner in ("bobby", ""):
        answer = answers.decide(approve(user="bob", owner=owner, dept=EAST))
        assert not answer.allowed
        assert "may be the user's own" in answer.reason
        assert answer.reason.startswith("unknown owner" if owner else "owner not given")
        assert answer.decision.rule is not None and answer.decision.rule.effect == "deny"
    # Where no deny on own records applies, an unknown owner changes nothing.
    read = Question(domain="reimburse", type="expense_report", action="read", user="bob")
    assert answers.decide(replace_owner(read, "bobby", SALES1)).allowed
    explained = answers.explain(approve(user="bob", owner="bobby", dept=EAST))
    assert explained["allowed"] is False and explained["reason"].startswith("unknown owner")


def replace_owner(question: Question, owner: str, dept: str) -> Question:
    return Question(**{**question.fields(), "owner": owner, "dept": dept})


def test_a_dot_segment_does_not_climb_into_a_department(
    answers: PolicyAnswers, engine: Engine
) -> None:
    """`/总部/华东区/../财务部` was taken for a department under 华东区 (bob's to approve)."""
    climbed = "/总部/华东区/../财务部"
    with pytest.raises(InvalidInput, match=r"^dept: department path .* has a '\.\.' segment"):
        answers.decide(approve(user="bob", owner="frank", dept=climbed))
    with pytest.raises(InvalidInput):
        engine.check("user:bob", "reimburse", "expense_report", "approve", "frank", climbed)
    for bad in ("/总部/华东区//销售一部", "/总部/华东区/销售一部/", "/总部/华东区/./x"):
        with pytest.raises(InvalidInput, match=r"^dept: "):
            canonical_question(approve(user="bob", owner="frank", dept=bad))
    # The real department is not bob's, and a name that merely starts the same is not either.
    assert not answers.decide(approve(user="bob", owner="frank", dept="/总部/财务部")).allowed
    assert not answers.decide(approve(user="bob", owner="frank", dept="/总部/华东")).allowed
    assert not answers.decide(approve(user="bob", owner="frank", dept=EAST + "二部")).allowed
    assert answers.decide(
        approve(user="bob", owner="alice", dept=" /总部/ 华东区/销售一部")
    ).allowed


# ---------------------------------------------------------------------- the directory side


def test_directory_names_are_canonical_and_colliding_names_decide_nothing() -> None:
    policy, _ = load_policy_dir(REPO / "policies")
    directory = DirectorySnapshot(
        users={
            "Bob": DirectoryUser("Bob", "sub-bob", " /总部/华东区 "),
            "Alice": DirectoryUser("Alice", "sub-alice", "/总部/华东区/销售一部"),
            "alice": DirectoryUser("alice", "sub-alice-2", "/总部/华东区/销售一部"),
        },
        departments={"/总部/华东区": "BOB", "/总部/华东区/销售一部": None},
        version="t",
    )
    engine = Engine(policy, directory, DOMAINS)
    assert set(engine.directory.users) == {"bob"}
    assert engine.directory.ambiguous == {"alice"}
    # bob still manages 华东区 although the directory spells him "Bob" and "BOB".
    assert "dept_manager" in engine.roles_for("bob", "reimburse")
    source = Source(engine)
    answers = Decisions(lambda: source).current()
    assert answers.decide(approve(user="alice")).reason == "ambiguous user name"
    refused = answers.decide(approve(user="bob", owner="ALICE", dept=SALES1))
    assert not refused.allowed and refused.reason.startswith("ambiguous owner name")
    assert answers.username_of(Question(domain="oa", type="t", action="a", sub="sub-bob")) == (
        "bob",
        "",
    )


# ---------------------------------------------------------------------- who may ask about whom


def test_a_users_token_asks_only_about_that_user_unless_the_policy_says_otherwise(
    answers: PolicyAnswers,
) -> None:
    directory = answers.engine.directory
    sub = {name: user.sub for name, user in directory.users.items()}
    alice = Asker(client_id="oa", sub=sub["alice"])
    about_alice = approve(user="ALICE")
    about_bob = approve(user="bob")
    answers.require_may_ask(alice, [about_alice])
    answers.require_may_ask(alice, [Question(domain="oa", type="t", action="a", sub=sub["alice"])])
    for others in ([about_bob], [about_alice, about_bob], [approve(user="nobody")]):
        with pytest.raises(AccessDenied, match="permission query"):
            answers.require_may_ask(alice, others)
    # A manager may not ask about his team either; the admin (dave) may ask about anyone.
    with pytest.raises(AccessDenied):
        answers.require_may_ask(Asker(client_id="oa", sub=sub["bob"]), [approve(user="alice")])
    dave = Asker(client_id="console", sub=sub["dave"])
    answers.require_may_ask(dave, [about_alice, about_bob, approve(user="nobody")])
    # A system's own token (client credentials: sub is its client_id) asks about anyone.
    answers.require_may_ask(Asker(client_id="reimburse", sub="reimburse"), [about_bob])
    # A disabled user's token, or one for nobody in the directory, asks about no one.
    for who in (sub["ivan"], "no-such-sub"):
        with pytest.raises(AccessDenied, match="not an enabled directory user"):
            answers.require_may_ask(Asker(client_id="oa", sub=who), [about_bob])


# ---------------------------------------------------------------------- the policy files


def test_bad_department_paths_in_policy_files_are_errors_with_file_and_line(
    tmp_path: Path,
) -> None:
    import shutil

    root = tmp_path / "policies"
    shutil.copytree(REPO / "policies", root)
    with (root / "oa.csv").open("a", encoding="utf-8") as f:
        f.write("p, employee, oa, notice, read, dept:/总部/华东区/../财务部, allow\n")
    lines = (root / "oa.csv").read_text(encoding="utf-8").count("\n")
    (root / "assignments.yaml").write_text(
        (root / "assignments.yaml")
        .read_text(encoding="utf-8")
        .replace(
            "department: /总部/财务部, role: finance, domain: erp",
            "department: /总部//财务部, role: finance, domain: erp",
        ),
        encoding="utf-8",
    )
    _, issues = load_policy_dir(root)
    errors = {str(i.source): i.message for i in issues if i.level == "error"}
    assert "'..' segment" in errors[f"oa.csv:{lines}"]
    assert any(
        k.startswith("assignments.yaml:") and "empty segment" in v for k, v in errors.items()
    )


def test_names_in_policy_files_are_read_in_canonical_spelling(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "policies"
    shutil.copytree(REPO / "policies", root)
    with (root / "reimburse.csv").open("a", encoding="utf-8") as f:
        # The same deny as the shipped one, shouted: a duplicate, not a new rule.
        f.write("p, Employee, REIMBURSE, Expense_Report, Approve, SELF, DENY\n")
        f.write("g, user:Ｆｒａｎｋ, Finance_Reviewer, reimburse\n")
    outcome = prepare_policy(lambda: load_policy_dir(root), DirectorySnapshot(), DOMAINS)
    assert outcome.ok, outcome.errors
    assert any("duplicate of the line at reimburse.csv:" in w for w in outcome.warnings)
    assert outcome.engine is not None
    links = [(k.member, k.role, k.domain) for k in outcome.engine.policy.links]
    assert ("user:frank", "finance_reviewer", "reimburse") in links

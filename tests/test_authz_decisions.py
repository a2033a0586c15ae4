"""The rules of asking the policy about a user (core.authz.decisions), without HTTP: who is
asked about, which domain a client's question is about, numeric resource ids, batch limits and
what is recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from idhub.core.audit import Actor, RequestContext
from idhub.core.authz.decisions import (
    MAX_BATCH,
    Decisions,
    PolicyAnswers,
    Question,
    require_batch_size,
    resource_id_text,
)
from idhub.core.authz.engine import Decision, Engine
from idhub.core.authz.model import (
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    PolicySet,
    Rule,
    Source,
    parse_scope,
)
from idhub.errors import InvalidInput, PolicyError

DOMAINS = ("oa", "reimburse")


def _engine() -> Engine:
    rules = [
        ("user:bob", "reimburse", "expense_report", "read", "all", "allow"),
        ("user:bob", "reimburse", "expense_report", "approve", "self", "allow"),
        ("user:ivan", "reimburse", "expense_report", "read", "all", "allow"),
    ]
    policy = PolicySet(
        root="t",
        rules=tuple(
            Rule(s, d, o, a, parse_scope(sc), e, Source("t.csv", i + 1))  # type: ignore[arg-type]
            for i, (s, d, o, a, sc, e) in enumerate(rules)
        ),
        links=(),
        assignments=(),
        catalog=Catalog(),
        file_hashes={"t.csv": "1"},
    )
    directory = DirectorySnapshot(
        users={
            "bob": DirectoryUser("bob", "sub-bob", "/hq", False, ()),
            "ivan": DirectoryUser("ivan", "sub-ivan", "/hq", True, ()),
        },
        departments={},
        groups=frozenset(),
        version="t",
    )
    return Engine(policy, directory, DOMAINS)


class FakeSource:
    def __init__(self, engine: Engine | None) -> None:
        self._engine = engine
        self.recorded: list[tuple[list[tuple[dict[str, Any], Decision]], Actor, str]] = []

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise PolicyError("no policy loaded")
        return self._engine

    def status(self) -> dict[str, Any]:
        return {"version": self.engine.version}

    def record_decisions(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> int:
        self.recorded.append(([(dict(r), d) for r, d in decisions], actor, version))
        return len(decisions)


@pytest.fixture
def source() -> FakeSource:
    return FakeSource(_engine())


@pytest.fixture
def answers(source: FakeSource) -> PolicyAnswers:
    return Decisions(lambda: source).current()


def ask(**fields: str) -> Question:
    base = {"domain": "reimburse", "type": "expense_report", "action": "read"}
    return Question(**{**base, **fields})


def test_users_are_named_by_username_or_subject(answers: PolicyAnswers) -> None:
    by_name = answers.decide(ask(user="bob"))
    by_sub = answers.decide(ask(sub="sub-bob"))
    assert by_name.allowed and by_sub.allowed
    assert by_name.username == by_sub.username == "bob"
    assert by_name.reason == "allowed by t.csv:1"
    # `sub` wins when both are given: it is what a token carries.
    assert answers.decide(ask(user="bob", sub="sub-nobody")).reason.startswith("unknown subject")


def test_unknown_and_disabled_users_are_denied_before_the_policy(
    answers: PolicyAnswers,
) -> None:
    unknown = answers.decide(ask(user="mallory"))
    assert (unknown.allowed, unknown.reason, unknown.username) == (False, "unknown user", None)
    # ivan has an allow line, but is disabled.
    disabled = answers.decide(ask(user="ivan"))
    assert (disabled.allowed, disabled.reason, disabled.username) == (
        False,
        "user is disabled",
        None,
    )
    assert disabled.decision.rule is None
    assert answers.scopes(ask(user="ivan")).reason == "user is disabled"
    assert answers.explain(ask(sub="sub-nobody")) == {
        "allowed": False,
        "reason": "unknown subject: no directory user has this sub",
        "policy_version": answers.version,
    }


def test_a_client_named_like_a_domain_asks_about_it_by_default(answers: PolicyAnswers) -> None:
    assert answers.domain_for("", client="reimburse") == "reimburse"
    assert answers.domain_for("oa", client="reimburse") == "oa"
    # Any client may ask about any configured domain by naming it.
    assert answers.domain_for("oa", client="svc") == "oa"
    with pytest.raises(InvalidInput, match=r"^domain is required$"):
        answers.domain_for("", client="svc")
    with pytest.raises(InvalidInput, match=r"^domain is required$"):
        answers.domain_for("", client=None)  # explain: the admin names the domain
    with pytest.raises(
        InvalidInput, match=r"^domain: unknown domain 'payroll' \(configured: oa, reimburse\)$"
    ):
        answers.domain_for("payroll", client="reimburse")


def test_an_integer_resource_id_is_its_decimal_text() -> None:
    assert resource_id_text(42) == "42"
    assert resource_id_text("INV-7") == "INV-7"
    assert resource_id_text(None) is None
    # Not numbers here: left for the caller's validation to refuse.
    assert resource_id_text(True) is True
    assert resource_id_text(1.5) == 1.5


def test_batch_limits() -> None:
    require_batch_size(1)
    require_batch_size(MAX_BATCH)
    with pytest.raises(InvalidInput, match="non-empty"):
        require_batch_size(0)
    with pytest.raises(InvalidInput, match=f"at most {MAX_BATCH} requests per batch, got 1001"):
        require_batch_size(MAX_BATCH + 1)


def test_a_batch_is_decided_and_recorded_in_one_write(
    source: FakeSource, answers: PolicyAnswers
) -> None:
    questions = [
        ask(user="bob", resource_id="7"),
        ask(sub="sub-bob", action="delete"),
        ask(user="mallory"),
    ]
    decided = answers.check(questions, client="reimburse", ctx=None)
    assert [a.allowed for a in decided] == [True, False, False]
    assert [a.reason for a in decided] == ["allowed by t.csv:1", "no rule matched", "unknown user"]
    assert len(source.recorded) == 1
    entries, actor, version = source.recorded[0]
    assert actor == Actor("client", "reimburse")
    assert version == answers.version
    details = [request for request, _ in entries]
    assert details[0]["user"] == "bob" and details[0]["resource_id"] == "7"
    # A question by subject is recorded with the username it resolved to.
    assert details[1]["user"] == "bob" and details[1]["sub"] == "sub-bob"
    assert details[2]["user"] == "mallory" and details[2]["sub"] is None
    with pytest.raises(InvalidInput):
        answers.check([], client="reimburse", ctx=None)


def test_scopes_of_a_known_user(answers: PolicyAnswers) -> None:
    answer = answers.scopes(ask(user="bob", action="approve"))
    assert answer.username == "bob"
    assert answer.scope.self and not answer.scope.all


def test_no_policy_means_no_answers() -> None:
    with pytest.raises(PolicyError):
        Decisions(lambda: FakeSource(None)).current()

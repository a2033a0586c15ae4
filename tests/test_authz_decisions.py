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
from idhub.errors import InvalidInput, PolicyError, StorageError

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

    def decision_events(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> list[Any]:
        # One stand-in event per batch: what the write receives, to check it is one write.
        return [([(dict(r), d) for r, d in decisions], actor, version)]

    def append_decision_events(self, events: Sequence[Any]) -> None:
        self.recorded.extend(events)


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


def test_a_name_the_snapshot_lacks_refreshes_it_only_if_the_directory_holds_it() -> None:
    """`Decisions.up_to_date`: a real new user is known at once; made-up names cost a lookup
    and never a refresh; a refresh that finds nothing new is not repeated for 0.2 s; a
    directory that cannot be read leaves the answers as they were."""
    stale, fresh = _engine(), _engine()
    fresh.directory.users["erin"] = DirectoryUser("erin", "sub-erin", "/hq", False, ())
    source = FakeSource(stale)
    in_store = {("sub", "sub-erin")}
    looked_up: list[tuple[str, str]] = []
    refreshed: list[float] = []
    now = [100.0]
    outcome: list[bool | Exception] = [True]

    def exists(kind: str, value: str) -> bool:
        looked_up.append((kind, value))
        return (kind, value) in in_store

    def refresh() -> bool:
        refreshed.append(now[0])
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        if result:
            source._engine = fresh
        return result

    decisions = Decisions(lambda: source, exists=exists, refresh=refresh, clock=lambda: now[0])
    answers = decisions.current()
    made_up = [ask(sub=f"sub-{i}") for i in range(3)] + [ask(user="mallory")]
    assert decisions.up_to_date(answers, made_up) is answers
    assert refreshed == [] and len(looked_up) == 4
    known = [ask(sub="sub-bob"), ask(user="bob")]
    assert decisions.up_to_date(answers, known) is answers and len(looked_up) == 4

    erin = ask(sub="sub-erin")
    assert answers.decide(erin).reason.startswith("unknown subject")
    current = decisions.up_to_date(answers, [erin])
    assert current is not answers and current.decide(erin).username == "erin"

    # Nothing new in the store after all (a race): not asked again for 0.2 s.
    source._engine, outcome[0] = stale, False
    decisions.up_to_date(decisions.current(), [erin])
    decisions.up_to_date(decisions.current(), [erin])
    assert len(refreshed) == 2
    now[0] += 0.25
    outcome[0] = StorageError("database down")
    assert decisions.up_to_date(answers, [erin]) is answers
    assert len(refreshed) == 3
    # The asking user's own token counts as a name too.
    now[0] += 0.25
    outcome[0] = True
    assert decisions.up_to_date(answers, [ask(user="bob")], asker_sub="sub-erin") is not answers

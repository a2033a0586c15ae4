"""The decision API's reading of a single check (web/pdp_api.py) and what a decision records
(core/authz/decisions.py), without HTTP: the shortcut for a flat question reads exactly what
the general reading does, and the request context is read only when something is recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.authz.decisions import Decisions, PolicyAnswers, Question
from idhub.core.authz.engine import Decision
from idhub.errors import InvalidInput
from idhub.web.pdp_api import _flat_question, _question
from idhub.web.pdp_openapi import MAX_TEXT
from tests.test_authz_decisions import FakeSource, _engine

BOB = {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read"}

# Flat bodies the shortcut takes, and bodies it must leave to the general reading.
TAKEN: list[dict[str, Any]] = [
    BOB,
    {**BOB, "user": "  BOB ", "type": "Expense_Report", "action": " READ"},
    {**BOB, "owner": "bob", "dept": "/hq", "resource_id": " 42 "},
    {**BOB, "user": "", "sub": "sub-bob"},
    {k: v for k, v in BOB.items() if k != "domain"},  # the client's own domain
    {**BOB, "domain": "", "owner": ""},
    {**BOB, "user": "mallory"},
    {**BOB, "user": "ivan"},
]
LEFT: list[Any] = [
    [BOB],
    "bob",
    None,
    {**BOB, "resource": {"id": "1", "owner": "bob"}},
    {**BOB, "actors": {"created_by": "bob"}},
    {**BOB, "resource_id": 42},
    {**BOB, "owner": None},
    {**BOB, "color": "red"},
    {**BOB, "type": ""},
    {k: v for k, v in BOB.items() if k != "action"},
    {**BOB, "user": ""},
    {**BOB, "domain": "erp"},  # not configured
    {**BOB, "dept": "/hq/../finance"},
    {**BOB, "owner": "x" * (MAX_TEXT + 1)},
]


@pytest.fixture
def answers() -> PolicyAnswers:
    return Decisions(lambda: FakeSource(_engine())).current()


@pytest.mark.parametrize("body", TAKEN)
def test_a_flat_question_is_read_as_the_general_reading_reads_it(
    answers: PolicyAnswers, body: dict[str, Any]
) -> None:
    flat = _flat_question(dict(body), answers, client="reimburse")
    assert flat is not None
    assert flat == _question(dict(body), "request", answers, client="reimburse")
    assert flat.canonical


@pytest.mark.parametrize("body", LEFT)
def test_anything_else_is_left_to_the_general_reading(answers: PolicyAnswers, body: Any) -> None:
    """None, so `_question` answers (or words the error) as it always did."""
    assert _flat_question(body, answers, client="reimburse") is None


def test_an_error_in_a_flat_question_is_worded_by_the_general_reading(
    answers: PolicyAnswers,
) -> None:
    with pytest.raises(InvalidInput, match=r"^request\.domain: unknown domain"):
        _question({**BOB, "domain": "erp"}, "request", answers, client="reimburse")


class RecordingSource(FakeSource):
    """Records every denial as a real pending event, as `AuthzService` does."""

    def decision_events(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> list[Any]:
        return [
            PendingEvent(EventType.AUTHZ_DECISION, actor, details=dict(r), ctx=ctx)
            for r, d in decisions
            if not d.allowed
        ]


def test_the_request_context_is_read_only_for_a_check_that_records() -> None:
    answers = Decisions(lambda: RecordingSource(_engine())).current()
    reads: list[int] = []
    context = RequestContext(client_ip="10.0.0.1", request_id="req-1")

    def ctx() -> RequestContext:
        reads.append(1)
        return context

    allowed, events = answers.decide_batch([_q(answers, BOB)], client="reimburse", ctx=ctx)
    assert allowed[0].allowed and events == [] and reads == []
    denied, events = answers.decide_batch(
        [_q(answers, {**BOB, "user": "mallory"}), _q(answers, {**BOB, "user": "ivan"})],
        client="reimburse",
        ctx=ctx,
    )
    assert [a.allowed for a in denied] == [False, False]
    assert reads == [1]  # once per check, not per event
    assert [e.ctx for e in events] == [context, context]
    # A context given as a value is carried as before.
    _, events = answers.decide_batch(
        [_q(answers, {**BOB, "user": "mallory"})], client="reimburse", ctx=context
    )
    assert events[0].ctx == context


def _q(answers: PolicyAnswers, body: dict[str, Any]) -> Any:
    return _question(body, "request", answers, client="reimburse")


def test_an_answer_is_the_bytes_and_headers_starlette_would_send() -> None:
    from starlette.responses import JSONResponse

    from idhub.web.pdp_api import _Json

    reason = 'denied by 报销.csv:3 "x"\n'
    content = {"allowed": False, "reason": reason, "policy_version": "v1"}
    ours, theirs = _Json(content), JSONResponse(content)
    assert (ours.status_code, ours.body, ours.raw_headers) == (
        theirs.status_code,
        theirs.body,
        theirs.raw_headers,
    )
    assert ours.background is None


def test_canonical_question_carries_every_field_of_a_question() -> None:
    """`canonical_question` builds a new `Question` naming each field: a field added later
    must be carried too, not silently dropped to its default."""
    import dataclasses

    from idhub.core.authz.decisions import canonical_question

    given = Question(
        domain="Reimburse",
        type="Expense_Report",
        action="READ",
        user=" Bob",
        sub="sub-bob",
        owner="Alice ",
        dept="/hq",
        resource_id=" 42",
        actors=(("Created_By", ("Alice",)),),
    )
    canonical = canonical_question(given)
    for item in dataclasses.fields(Question):
        if item.name == "canonical":
            continue
        assert getattr(given, item.name) != item.default, f"set {item.name} in this test"
        assert getattr(canonical, item.name) not in ("", ()), item.name
    assert canonical.canonical
    assert (canonical.domain, canonical.user, canonical.resource_id) == ("reimburse", "bob", "42")
    assert canonical.actors == (("created_by", ("alice",)),)

"""Dynamic segregation of duties at decision time: the decision API takes the record's earlier
actors and denies a person a second step of one `records` rule on that record, the reason
naming the rule id; actors are canonicalised like every other identifier. A real uvicorn,
real client-credentials tokens and idhub.sdk's PdpClient, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.core.audit import EventType
from idhub.core.authz.model import Source
from idhub.core.authz.sod_dynamic import RecordIndex, canonical_actors
from idhub.core.authz.sod_rules import RecordRule, SodPolicy
from idhub.errors import InvalidInput
from idhub.sdk import PdpClient
from tests.conftest import LiveServer
from tests.oidc_support import prepare
from tests.test_pdp_api import NO_WATCH, SALES1, Api, client_token, seed_company

STEPS = "expense-report-steps"


@pytest.fixture
def api(make_live_server: Callable[..., LiveServer], db_url: str) -> Api:
    live = make_live_server(db_url, toml=NO_WATCH)
    prepare(live.services)
    seed_company(live.services)
    assert live.services.authz.refresh_directory()
    return Api(live, client_token(live, "reimburse", "authz"), "")


def ask(api: Api, body: dict[str, object], token: str | None = None) -> dict[str, object]:
    response = api.post("/api/v1/authz/check", body, token)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_one_person_never_performs_two_steps_of_one_record(api: Api) -> None:
    report = {"type": "expense_report", "owner": "alice", "dept": SALES1}
    # carol (财务审核组) reviews what bob approved; not what she approved herself, in any spelling
    ok = ask(api, {**report, "user": "carol", "action": "review", "actors": {"approved_by": "bob"}})
    assert ok["allowed"] is True
    for spelling in ("carol", "Carol", " ＣＡＲＯＬ ", "car\u200bol"):
        denied = ask(
            api,
            {
                **report,
                "user": "carol",
                "action": "review",
                "actors": {"created_by": "alice", "approved_by": ["bob", spelling]},
            },
        )
        assert denied["allowed"] is False, spelling
        assert str(denied["reason"]).startswith(f"denied by sod rule {STEPS} (sod.yaml:")
        assert "carol is this record's approved_by and may not also be its reviewed_by" in str(
            denied["reason"]
        )
    # bob created the report for alice (an assistant): he may not approve it
    made = ask(api, {**report, "user": "bob", "action": "approve", "actors": {"created_by": "bob"}})
    assert made["allowed"] is False and STEPS in str(made["reason"])
    # carol pays (finance): not a report she reviewed
    pay = {**report, "user": "carol", "action": "pay"}
    assert ask(api, {**pay, "actors": {"reviewed_by": "erin"}})["allowed"] is True
    assert ask(api, {**pay, "actors": {"reviewed_by": "CAROL"}})["allowed"] is False
    # the same step twice is no conflict (a second approval round by bob)
    again = ask(
        api, {**report, "user": "bob", "action": "approve", "actors": {"approved_by": "bob"}}
    )
    assert again["allowed"] is True


def test_the_owner_is_the_creator_without_any_actors(api: Api) -> None:
    """voucher-maker-checker's `owner: created_by`: carol may not post the voucher she made,
    although no policy line forbids it; the reason names the rule."""
    erp = client_token(api.live, "erp", "authz")
    voucher = {"domain": "erp", "type": "voucher", "action": "post", "user": "carol"}
    mine = ask(api, {**voucher, "owner": "carol"}, erp)
    assert mine["allowed"] is False
    assert str(mine["reason"]).startswith("denied by sod rule voucher-maker-checker (sod.yaml:")
    assert ask(api, {**voucher, "owner": "alice"}, erp)["allowed"] is True


def test_bad_actors_are_a_400_naming_the_field(api: Api) -> None:
    base = {"user": "carol", "type": "expense_report", "action": "review", "owner": "alice"}
    for actors, message in (
        ({"aproved_by": "bob"}, "request.actors: unknown step 'aproved_by'"),
        ("bob", "request.actors must be an object"),
        ({"approved_by": 7}, "request.actors.approved_by must be a username or a list"),
        ({"approved_by": [7]}, "request.actors.approved_by must hold usernames"),
    ):
        response = api.post("/api/v1/authz/check", {**base, "actors": actors})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        assert response.json()["error_description"].startswith(message), response.text
    batch = api.post(
        "/api/v1/authz/check", {"requests": [base, {**base, "actors": {"x y": "bob"}}]}
    )
    assert batch.status_code == 400
    assert batch.json()["error_description"].startswith("requests[1].actors: 'x y'")


def test_a_refusal_is_audited_with_the_rule_and_actors(api: Api) -> None:
    ask(
        api,
        {
            "user": "carol",
            "type": "expense_report",
            "action": "review",
            "owner": "alice",
            "resource_id": "r-9",
            "actors": {"approved_by": "Carol"},
        },
    )
    with api.live.services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == EventType.AUTHZ_DECISION.value)
        ).all()
    [denied] = [json.loads(r.details) for r in rows if r.outcome == "denied"]
    assert denied["sod_rule"] == STEPS
    assert denied["actors"] == {"approved_by": ["carol"]}
    assert denied["resource_id"] == "r-9"


def test_sdk_passes_actors(api: Api, known_secrets) -> None:  # type: ignore[no-untyped-def]
    live = api.live
    _client, secret = live.services.clients.register(
        "reimburse-pdp",
        grant_types=("client_credentials",),
        scope="authz",
        allowed_audiences=("reimburse", "idhub"),
    )
    assert secret is not None
    known_secrets.add(secret)
    pdp = PdpClient(live.url, client_id="reimburse-pdp", client_secret=secret)
    one = pdp.check(
        "carol",
        "reimburse",
        "expense_report",
        "review",
        owner="alice",
        actors={"approved_by": "carol"},
    )
    assert not one.allowed and STEPS in one.reason
    many = pdp.check_many(
        [
            {
                "user": "carol",
                "domain": "reimburse",
                "type": "expense_report",
                "action": "review",
                "owner": "alice",
            },
            {
                "user": "carol",
                "domain": "reimburse",
                "type": "expense_report",
                "action": "review",
                "owner": "alice",
                "actors": {"approved_by": "bob"},
            },
        ],
        actors={"approved_by": ["carol"]},
    )
    assert [d.allowed for d in many] == [False, True]


# ---------------------------------------------------------------------- the rule itself

RULE = RecordRule(
    "r",
    "why",
    "d",
    "t",
    (("created_by", ("create",)), ("approved_by", ("approve",)), ("paid_by", ("pay",))),
    Source("sod.yaml", 3),
    owner="created_by",
)


def test_record_index_and_its_cost() -> None:
    index = RecordIndex(SodPolicy(records=(RULE,)))
    actors = canonical_actors({"Approved_By": "ＢＯＢ", "paid_by": None}, index.actor_names)
    assert actors == {"approved_by": ("bob",)}
    hit = index.refusal(domain="d", obj="t", action="pay", user="bob", owner="x", actors=actors)
    assert hit is not None and (hit.step, hit.earlier) == ("paid_by", "approved_by")
    owner = index.refusal(domain="d", obj="t", action="approve", user="x", owner="x", actors={})
    assert owner is not None and owner.earlier == "created_by"
    assert (
        index.refusal(domain="d", obj="t", action="read", user="bob", owner="", actors=actors)
        is None
    )
    assert (
        index.refusal(domain="d", obj="u", action="pay", user="bob", owner="", actors=actors)
        is None
    )
    with pytest.raises(InvalidInput, match="unknown step 'reviewed_by'"):
        canonical_actors({"reviewed_by": "bob"}, index.actor_names)
    # A sanity bound, far above the benchmark's figure (bench/bench_sod.py): a refusal check
    # is a few dict lookups, never a scan.
    started = time.perf_counter()
    for _ in range(10_000):
        index.refusal(domain="d", obj="t", action="pay", user="eve", owner="x", actors=actors)
    assert (time.perf_counter() - started) / 10_000 < 200e-6


STEP_NAMES = ("created_by", "approved_by", "paid_by")
PEOPLE = ("ann", "ben", "cat")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(STEP_NAMES),
        st.lists(st.sampled_from(("create", "approve", "pay", "read")), min_size=1, max_size=2),
        min_size=2,
    ),
    st.sampled_from(("", *STEP_NAMES)),
    st.sampled_from(("create", "approve", "pay", "read", "export")),
    st.sampled_from(PEOPLE),
    st.sampled_from(("", *PEOPLE)),
    st.dictionaries(st.sampled_from(STEP_NAMES), st.lists(st.sampled_from(PEOPLE), max_size=2)),
)
def test_refusal_is_exactly_two_steps_by_one_person(
    steps: dict[str, list[str]],
    owner_step: str,
    action: str,
    user: str,
    owner: str,
    actors: dict[str, list[str]],
) -> None:
    """Denied exactly when the action is one step of the rule and the user is the actor (or,
    for the owner step, the owner) of another step of it."""
    # An action belongs to the first step listing it (the policy check refuses duplicates).
    first: dict[str, str] = {}
    for step, actions in steps.items():
        for a in actions:
            first.setdefault(a, step)
    rule = dataclasses.replace(
        RULE,
        steps=tuple((s, tuple(a for a in acts if first[a] == s)) for s, acts in steps.items()),
        owner=owner_step if owner_step in steps else "",
    )
    index = RecordIndex(SodPolicy(records=(rule,)))
    got = index.refusal(
        domain="d",
        obj="t",
        action=action,
        user=user,
        owner=owner,
        actors={k: tuple(v) for k, v in actors.items()},
    )
    mine = first.get(action)
    expected = mine is not None and any(
        other != mine and (user in actors.get(other, ()) or (other == rule.owner and owner == user))
        for other in steps
    )
    assert (got is not None) == expected

"""No spelling of a name or path changes a decision, and the SQL filter agrees with `check`.

Hypothesis draws small random policies and directories (role links, every assignment kind,
every scope kind, Chinese department names where one is a prefix of another) and writes every
identifier in them, and in every request, in a random spelling: letter case, full-width
letters and digits, leading and trailing (ideographic) spaces, zero-width spaces. The engine
built from the respelled policy and directory must decide every respelled request exactly as
the engine built from the canonical spelling decides the canonical request; and the SDK's SQL
filter, run by SQLite over records stored in canonical spelling, must return exactly the
records `check` allows, whichever spelling the request used.
"""

from __future__ import annotations

import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idhub.core.audit import Actor, RequestContext
from idhub.core.authz.decisions import Decisions, Question
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import (
    AssignmentRule,
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    Link,
    PolicySet,
    Rule,
    Source,
    parse_scope,
)
from idhub.core.identifiers import canonical_subject
from idhub.errors import InvalidInput
from idhub.sdk.identifiers import canonical_name as sdk_name
from idhub.sdk.identifiers import canonical_path as sdk_path
from idhub.sdk.pdp import DataScope, DepartmentScope

DOMAINS = ("d1", "d2")
ROLES = ("r0", "r1", "r2")
USERS = ("u0", "u1", "ab", "李雷")
GROUPS = ("g1", "财务组")
# /总部/华东 is a prefix of /总部/华东区 as text, not as a department.
DEPTS = ("/总部", "/总部/华东", "/总部/华东区", "/总部/华东区/sales", "/e")
SCOPES = ("all", "self", "dept", "dept_tree", "dept:/总部/华东区", "dept:/总部/华东", "dept:/e")
OBJS = ("t1", "t2", "*")
ACTS = ("read", "write", "*")
SRC = Source("gen.csv", 1)
PADDING = ("", "", " ", "\u3000", "\t ", " \u3000")
# Records stored with a department that is not a path: below no department at all.
NOT_PATHS = ("/总部/华东区/../e", "/总部/华东区//sales", "/总部/华东区/", "/总部/./华东区")


def _char_spellings(ch: str) -> list[str]:
    if ch.isascii() and ch.isalpha():
        low, up = ch.lower(), ch.upper()
        return [low, up, chr(ord(low) + 0xFEE0), chr(ord(up) + 0xFEE0)]
    if ch.isascii() and ch.isdigit():
        return [ch, chr(ord(ch) + 0xFEE0)]
    return [ch]


@st.composite
def spelled(draw: st.DrawFn, text: str, *, pad: bool = True) -> str:
    """`text` (canonical) in a spelling that canonicalises back to it."""
    if text in ("", "*"):
        return text
    out = "".join(draw(st.sampled_from(_char_spellings(ch))) for ch in text)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(out)))
        out = out[:at] + "\u200b" + out[at:]
    if pad:
        out = draw(st.sampled_from(PADDING)) + out + draw(st.sampled_from(PADDING))
    return out


@st.composite
def spelled_path(draw: st.DrawFn, path: str) -> str:
    if not path:
        return path
    segments = [draw(spelled(s)) for s in path[1:].split("/")]
    out = draw(st.sampled_from(PADDING))
    for segment in segments:
        out += draw(st.sampled_from(("/", "/", "\uff0f"))) + segment  # or a full-width solidus
    return out


@st.composite
def spelled_scope(draw: st.DrawFn, scope: str) -> str:
    if scope.startswith("dept:"):
        return draw(spelled("dept:", pad=False)) + draw(spelled_path(scope[5:]))
    return draw(spelled(scope))


@st.composite
def spelled_subject(draw: st.DrawFn, subject: str) -> str:
    if subject.startswith("user:"):
        return draw(spelled("user:", pad=False)) + draw(spelled(subject[5:]))
    return draw(spelled(subject))


rule_tuples = st.tuples(
    st.sampled_from((*ROLES, "user:u0", "user:李雷")),
    st.sampled_from((*DOMAINS, "*")),
    st.sampled_from(OBJS),
    st.sampled_from(ACTS),
    st.sampled_from(SCOPES),
    st.sampled_from(("allow", "allow", "deny")),
)
link_tuples = st.tuples(
    st.sampled_from(ROLES + tuple(f"user:{u}" for u in USERS)),
    st.sampled_from(ROLES),
    st.sampled_from((*DOMAINS, "*")),
)
_role, _domain = st.sampled_from(ROLES), st.sampled_from(DOMAINS)
assignment_tuples = st.one_of(
    st.tuples(st.just("everyone"), _role, _domain, st.just("")),
    st.tuples(st.just("group"), _role, _domain, st.sampled_from(GROUPS)),
    st.tuples(st.just("department"), _role, _domain, st.sampled_from(DEPTS)),
    st.tuples(st.just("manager"), _role, _domain, st.just("")),
)
user_tuples = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sampled_from((*DEPTS, None)),
        st.booleans(),
        st.sets(st.sampled_from(GROUPS)),
    ),
    max_size=4,
    unique_by=lambda t: t[0],
)
manager_map = st.dictionaries(st.sampled_from(DEPTS), st.sampled_from(USERS), max_size=3)
request_tuples = st.tuples(
    st.sampled_from((*(f"user:{u}" for u in USERS), "user:nobody", "r1")),
    st.sampled_from(DOMAINS),
    st.sampled_from(("t1", "t2")),
    st.sampled_from(("read", "write")),
    st.sampled_from((*USERS, "", "nobody")),
    st.sampled_from((*DEPTS, "")),
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Engine, Engine, list[tuple[tuple[str, ...], tuple[str, ...]]]]:
    """(canonical engine, respelled engine, [(canonical request, respelled request)])."""
    rules = draw(st.lists(rule_tuples, max_size=14))
    links = draw(st.lists(link_tuples, max_size=6))
    assigns = draw(st.lists(assignment_tuples, max_size=4))
    users = draw(user_tuples)
    managers = draw(manager_map)

    def policy(
        rule_rows: list[tuple[str, ...]],
        link_rows: list[tuple[str, ...]],
        assign_rows: list[tuple[str, ...]],
    ) -> PolicySet:
        return PolicySet(
            root="gen",
            rules=tuple(
                Rule(s, d, o, a, parse_scope(sc), e, SRC)  # type: ignore[arg-type]
                for s, d, o, a, sc, e in rule_rows
            ),
            links=tuple(Link(m, r, d, SRC) for m, r, d in link_rows),
            assignments=tuple(
                AssignmentRule(k, r, d, SRC, m)  # type: ignore[arg-type]
                for k, r, d, m in assign_rows
            ),
            catalog=Catalog(),
            file_hashes={"gen.csv": "x"},
        )

    def directory(
        user_rows: list[tuple[str, str | None, bool, list[str]]], manager_rows: dict[str, str]
    ) -> DirectorySnapshot:
        return DirectorySnapshot(
            users={
                name: DirectoryUser(name, f"sub-{sdk_name(name)}", dept, off, tuple(groups))
                for name, dept, off, groups in user_rows
            },
            departments={**{d: None for d in DEPTS}, **manager_rows},
            groups=frozenset(g for *_, groups in user_rows for g in groups),
            version="gen",
        )

    canonical = Engine(
        policy(rules, links, assigns),
        directory([(n, d, off, sorted(g)) for n, d, off, g in users], managers),
        DOMAINS,
    )
    respelled = Engine(
        policy(
            [
                (
                    draw(spelled_subject(s)),
                    draw(spelled(d)),
                    draw(spelled(o)),
                    draw(spelled(a)),
                    draw(spelled_scope(sc)),
                    e,
                )
                for s, d, o, a, sc, e in rules
            ],
            [(draw(spelled_subject(m)), draw(spelled(r)), draw(spelled(d))) for m, r, d in links],
            [
                (
                    k,
                    draw(spelled(r)),
                    draw(spelled(d)),
                    draw(spelled_path(m)) if k == "department" else draw(spelled(m)),
                )
                for k, r, d, m in assigns
            ],
        ),
        directory(
            [
                (
                    draw(spelled(n)),
                    draw(spelled_path(d)) if d else d,
                    off,
                    [draw(spelled(g)) for g in sorted(g_set)],
                )
                for n, d, off, g_set in users
            ],
            {draw(spelled_path(d)): draw(spelled(m)) for d, m in managers.items()},
        ),
        DOMAINS,
    )
    requests = []
    for request in draw(st.lists(request_tuples, min_size=1, max_size=6)):
        subject, domain, obj, act, owner, dept = request
        variant = (
            draw(spelled_subject(subject)),
            draw(spelled(domain)),
            draw(spelled(obj)),
            draw(spelled(act)),
            draw(spelled(owner)),
            draw(spelled_path(dept)),
        )
        requests.append((request, variant))
    return canonical, respelled, requests


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_spelling_changes_a_decision(
    world: tuple[Engine, Engine, list[tuple[tuple[str, ...], tuple[str, ...]]]],
) -> None:
    canonical, respelled, requests = world
    assert canonical.links == respelled.links
    for request, variant in requests:
        expected = canonical.check(*request)
        for engine in (canonical, respelled):
            got = engine.check(*variant)
            assert (got.allowed, got.rule) == (expected.allowed, expected.rule), (request, variant)
        assert respelled.scopes(*variant[:4]) == canonical.scopes(*request[:4])
        if request[0].startswith("user:"):
            assert respelled.roles_for(variant[0].split(":", 1)[1], variant[1]) == (
                canonical.roles_for(request[0][5:], request[1])
            )


class _Source:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status(self) -> dict[str, object]:
        return {}

    def record_decisions(
        self, decisions: object, *, actor: Actor, version: str, ctx: RequestContext | None = None
    ) -> int:
        return 0

    def decision_events(
        self, decisions: object, *, actor: Actor, version: str, ctx: RequestContext | None = None
    ) -> list[object]:
        return []

    def append_decision_events(self, events: object) -> None:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.data())
def test_the_sql_filter_agrees_with_check_in_every_spelling(
    world: tuple[Engine, Engine, list[tuple[tuple[str, ...], tuple[str, ...]]]],
    data: st.DataObject,
) -> None:
    _canonical, engine, requests = world
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE records (id INTEGER, owner TEXT, dept TEXT)")
    # What a system stores: owner and department in canonical spelling (idhub.sdk.identifiers),
    # from whatever spelling its users typed; plus rows whose department is not a path.
    records: list[tuple[int, str, str, str, str]] = []  # id, owner as typed, dept as typed, ...
    typed_depts = [data.draw(spelled_path(dept)) for dept in (*DEPTS, "")]
    for owner in (*USERS, "nobody", ""):
        typed_owner = data.draw(spelled(owner))
        for typed_dept in typed_depts:
            records.append(
                (len(records), typed_owner, typed_dept, sdk_name(typed_owner), sdk_path(typed_dept))
            )
        for bad in NOT_PATHS:
            records.append((len(records), owner, bad, sdk_name(owner), bad))
    db.executemany("INSERT INTO records VALUES (?, ?, ?)", [(r[0], r[3], r[4]) for r in records])
    answers = Decisions(lambda: _Source(engine)).current()
    for _request, variant in requests:
        subject, domain, obj, act = variant[:4]
        if not canonical_subject(subject).startswith("user:"):
            continue
        scope = engine.scopes(subject, domain, obj, act).to_json()
        filter_ = DataScope(
            all=scope["all"],
            self=scope["self"],
            departments=tuple(DepartmentScope(**d) for d in scope["departments"]),
            exclude_self=scope["exclude"]["self"],
            exclude_departments=tuple(
                DepartmentScope(**d) for d in scope["exclude"]["departments"]
            ),
        )
        me = subject.split(":", 1)[1] if ":" in subject else subject
        where, params = filter_.sql_where(owner_column="owner", dept_column="dept", me=me)
        visible = {row[0] for row in db.execute(f"SELECT id FROM records WHERE {where}", params)}  # noqa: S608
        for rid, typed_owner, typed_dept, _owner, stored_dept in records:
            if stored_dept in NOT_PATHS:
                # Not a department path: check refuses it, and the filter treats the record as
                # one with no department (it is below no department entry).
                try:
                    engine.check(subject, domain, obj, act, typed_owner, typed_dept)
                    raise AssertionError(f"{typed_dept!r} was accepted")
                except InvalidInput:
                    pass
                without = engine.check(subject, domain, obj, act, typed_owner, "").allowed
                assert (rid in visible) == without, (variant, typed_owner, typed_dept, where)
                continue
            allowed = engine.check(subject, domain, obj, act, typed_owner, typed_dept).allowed
            assert (rid in visible) == allowed, (variant, typed_owner, typed_dept, where)
            # The decision API is stricter only where an owner nobody is might be the user.
            question = Question(
                domain=domain, type=obj, action=act, user=me, owner=typed_owner, dept=typed_dept
            )
            if answers.decide(question).allowed:
                assert rid in visible

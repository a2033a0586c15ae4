"""The indexed engine must decide exactly as plain pycasbin does on the same model and policy.

Hypothesis draws small random policies (role cycles, `*` domains and wildcards, every scope
kind, allow and deny, directory-derived links) and random requests; a seeded generator builds a
larger policy where pycasbin is slow but still usable. Data scopes are checked against decisions:
a record passes the scope filter exactly when a check on it says allow.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    user_subject,
)
from idhub.core.authz.reference import reference_enforcer

DOMAINS = ("d1", "d2")
ROLES = ("r0", "r1", "r2", "r3")
USERS = ("u0", "u1", "u2", "u3", "u4")
DEPTS = ("/a", "/a/b", "/a/b/c", "/a/d", "/e")
SCOPES = ("all", "self", "dept", "dept_tree", "dept:/a", "dept:/a/b", "dept:/e")
OBJS = ("t1", "t2", "*")
ACTS = ("read", "write", "*")
SRC = Source("gen.csv", 1)

subjects = st.sampled_from(ROLES + tuple(user_subject(u) for u in USERS[:2]))
domains = st.sampled_from((*DOMAINS, "*"))
rules = st.builds(
    lambda s, d, o, a, sc, e: Rule(s, d, o, a, parse_scope(sc), e, SRC),
    subjects,
    domains,
    st.sampled_from(OBJS),
    st.sampled_from(ACTS),
    st.sampled_from(SCOPES),
    st.sampled_from(("allow", "allow", "deny")),
)
role_links = st.builds(
    lambda m, r, d: Link(m, r, d, SRC),
    st.sampled_from(ROLES),
    st.sampled_from(ROLES),
    domains,
)
user_links = st.builds(
    lambda u, r, d: Link(user_subject(u), r, d, SRC),
    st.sampled_from(USERS),
    st.sampled_from(ROLES),
    domains,
)
assignments = st.one_of(
    st.builds(lambda r, d: AssignmentRule("everyone", r, d, SRC), st.sampled_from(ROLES), domains),
    st.builds(
        lambda g, r, d: AssignmentRule("group", r, d, SRC, g),
        st.sampled_from(("g1", "g2")),
        st.sampled_from(ROLES),
        domains,
    ),
    st.builds(
        lambda p, sub, r, d: AssignmentRule("department", r, d, SRC, p, sub),
        st.sampled_from(DEPTS),
        st.booleans(),
        st.sampled_from(ROLES),
        domains,
    ),
    st.builds(lambda r, d: AssignmentRule("manager", r, d, SRC), st.sampled_from(ROLES), domains),
)
directory_users = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sampled_from((*DEPTS, None)),
        st.booleans(),
        st.sets(st.sampled_from(("g1", "g2"))),
    ),
    max_size=5,
    unique_by=lambda t: t[0],
)
managers = st.dictionaries(st.sampled_from(DEPTS), st.sampled_from((*USERS, "ghost")), max_size=3)
requests = st.tuples(
    st.sampled_from((*(user_subject(u) for u in USERS), "user:u0", "user:nobody", "r1")),
    st.sampled_from((*DOMAINS, "other")),
    st.sampled_from(("t1", "t1", "t2")),
    st.sampled_from(("read", "read", "write")),
    st.sampled_from((*USERS, "", "u0", "u0")),
    st.sampled_from((*DEPTS, "", "/a/bc")),
)


def make_engine(
    rule_list: list[Rule],
    links: list[Link],
    rules_from_directory: list[AssignmentRule],
    users: list[tuple[str, str | None, bool, set[str]]],
    managed: dict[str, str],
) -> Engine:
    policy = PolicySet(
        root="gen",
        rules=tuple(rule_list),
        links=tuple(links),
        assignments=tuple(rules_from_directory),
        catalog=Catalog(),
        file_hashes={"gen.csv": "x"},
    )
    directory = DirectorySnapshot(
        users={
            name: DirectoryUser(name, f"sub-{name}", dept, disabled, tuple(sorted(groups)))
            for name, dept, disabled, groups in users
        },
        departments={path: managed.get(path) for path in DEPTS},
        groups=frozenset({"g1", "g2"}),
        version="gen",
    )
    return Engine(policy, directory, DOMAINS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rules, max_size=25),
    st.lists(role_links, max_size=6),
    st.lists(user_links, min_size=2, max_size=8),
    st.lists(assignments, min_size=1, max_size=4),
    directory_users,
    managers,
    st.lists(requests, min_size=1, max_size=15),
)
def test_engine_decides_like_pycasbin(
    rule_list: list[Rule],
    links: list[Link],
    ulinks: list[Link],
    derived: list[AssignmentRule],
    users: list[tuple[str, str | None, bool, set[str]]],
    managed: dict[str, str],
    reqs: list[tuple[str, str, str, str, str, str]],
) -> None:
    engine = make_engine(rule_list, links + ulinks, derived, users, managed)
    enforcer = reference_enforcer(engine)
    for req in reqs:
        expected = enforcer.enforce(*req)
        assert engine.check(*req).allowed is expected, req


@settings(max_examples=150, deadline=None)
@given(
    st.lists(rules, max_size=25),
    st.lists(role_links, max_size=6),
    st.lists(assignments, max_size=4),
    directory_users,
    managers,
    st.sampled_from(USERS),
    st.sampled_from(DOMAINS),
    st.sampled_from(("t1", "t2")),
    st.sampled_from(("read", "write")),
)
def test_scope_filter_agrees_with_checks(
    rule_list: list[Rule],
    links: list[Link],
    derived: list[AssignmentRule],
    users: list[tuple[str, str | None, bool, set[str]]],
    managed: dict[str, str],
    user: str,
    domain: str,
    obj: str,
    act: str,
) -> None:
    engine = make_engine(rule_list, links, derived, users, managed)
    subject = user_subject(user)
    scope = engine.scopes(subject, domain, obj, act)
    for owner in (*USERS, ""):
        for dept in (*DEPTS, "", "/a/bc", "/a/b/c/x"):
            allowed = engine.check(subject, domain, obj, act, owner, dept).allowed
            assert scope.allows(user, owner, dept) is allowed, (owner, dept, scope)


def _large(seed: int) -> Engine:
    """2,000 lines, 60 roles with inheritance, 400 users: pycasbin needs ~0.1 s a decision."""
    rnd = random.Random(seed)
    roles = [f"role{i}" for i in range(60)]
    depts = (
        ["/c"]
        + [f"/c/r{i}" for i in range(8)]
        + [f"/c/r{i}/t{j}" for i in range(8) for j in range(5)]
    )
    types = [f"type{i}" for i in range(15)]
    acts = ["create", "read", "update", "approve", "export"]
    scopes = ["all", "self", "dept", "dept_tree", *(f"dept:{d}" for d in depts[:9])]
    rule_list = [
        Rule(
            rnd.choice(roles),
            rnd.choice((*DOMAINS, "*")),
            rnd.choice(types),
            rnd.choice(acts),
            parse_scope(rnd.choice(scopes)),
            "deny" if rnd.random() < 0.1 else "allow",
            Source("big.csv", i + 1),
        )
        for i in range(2000)
    ]
    links = [
        Link(roles[i], roles[rnd.randrange(i)], rnd.choice((*DOMAINS, "*")), SRC)
        for i in range(1, 60)
        for _ in range(rnd.randrange(2))
    ]
    users = [
        (f"u{i}", rnd.choice(depts), rnd.random() < 0.02, {rnd.choice(("g1", "g2"))})
        for i in range(400)
    ]
    links += [
        Link(user_subject(f"u{i}"), rnd.choice(roles), rnd.choice(DOMAINS), SRC) for i in range(400)
    ]
    derived = [
        AssignmentRule("group", roles[3], "d1", SRC, "g1"),
        AssignmentRule("department", roles[7], "*", SRC, "/c/r2"),
        AssignmentRule("manager", roles[11], "d2", SRC),
    ]
    policy = PolicySet(
        root="big",
        rules=tuple(rule_list),
        links=tuple(links),
        assignments=tuple(derived),
        catalog=Catalog(),
        file_hashes={"b": "1"},
    )
    directory = DirectorySnapshot(
        users={n: DirectoryUser(n, n, d, dis, tuple(g)) for n, d, dis, g in users},
        departments={d: f"u{rnd.randrange(400)}" for d in depts},
        groups=frozenset({"g1", "g2"}),
        version="big",
    )
    return Engine(policy, directory, DOMAINS)


LARGE = _large(7)
LARGE_ENFORCER = reference_enforcer(LARGE)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 399),
    st.sampled_from(DOMAINS),
    st.integers(0, 14),
    st.sampled_from(["create", "read", "update", "approve", "export"]),
    st.integers(0, 420),
    st.sampled_from(["/c", "/c/r2", "/c/r2/t1", "/c/r5/t4", ""]),
)
def test_engine_decides_like_pycasbin_on_a_large_policy(
    user: int, domain: str, obj: int, act: str, owner: int, dept: str
) -> None:
    req = (f"user:u{user}", domain, f"type{obj}", act, f"u{owner}", dept)
    assert LARGE.check(*req).allowed is LARGE_ENFORCER.enforce(*req), req


def test_large_policy_has_both_answers() -> None:
    """The large comparison is only meaningful if it sees allows and denies."""
    rnd = random.Random(1)
    answers = set()
    for _ in range(300):
        req = (
            f"user:u{rnd.randrange(400)}",
            rnd.choice(DOMAINS),
            f"type{rnd.randrange(15)}",
            rnd.choice(["read", "approve"]),
            f"u{rnd.randrange(400)}",
            "/c/r2/t1",
        )
        answers.add(LARGE.check(*req).allowed)
    assert answers == {True, False}


def test_shipped_policy_decides_like_pycasbin_reading_the_shipped_model_file() -> None:
    """Every user of the test directory, every declared type and action in every domain, over
    a grid of owners and departments: the index and pycasbin loading policies/model.conf agree,
    and every scope filter agrees with the decisions."""
    from pathlib import Path

    import casbin

    from idhub.adapters.policy_files import load_policy_dir
    from idhub.core.authz.reference import _RowsAdapter

    root = Path(__file__).resolve().parents[1] / "policies"
    policy, issues = load_policy_dir(root)
    assert not [i for i in issues if i.level == "error"]
    assert policy.fixture is not None
    domains = ("oa", "reimburse", "erp", "archive", "idhub")
    shipped = Engine(policy, policy.fixture, domains)
    p_rows, g_rows = shipped.casbin_rows()
    enforcer = casbin.Enforcer(str(root / "model.conf"), _RowsAdapter(p_rows, g_rows))
    enforcer.add_function("scopeMatch", shipped.scope_function())
    users = sorted(policy.fixture.users)
    depts = [*sorted(policy.fixture.departments), ""]
    compared = allowed = 0
    for domain, types in policy.catalog.resources.items():
        for obj, actions in types.items():
            for act in sorted(actions):
                for user in users:
                    subject = user_subject(user)
                    scope = shipped.scopes(subject, domain, obj, act)
                    for owner in (user, "alice", ""):
                        for dept in depts:
                            req = (subject, domain, obj, act, owner, dept)
                            ours = shipped.check(*req).allowed
                            assert ours is enforcer.enforce(*req), req
                            assert scope.allows(user, owner, dept) is ours, req
                            compared += 1
                            allowed += ours
    assert compared > 10_000 and 0 < allowed < compared

"""Engine semantics that random testing reaches rarely, each pinned against plain pycasbin where
a decision is involved: the role-chain depth Casbin follows, manager-scoped roles, `*` domains,
disabled users, users named like roles, and the data-scope answer systems turn into SQL."""

from __future__ import annotations

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
from idhub.core.authz.reference import reference_enforcer

SRC = Source("t.csv", 1)
DOMAINS = ("oa", "reimburse")


def engine(
    rules: list[tuple[str, ...]],
    links: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    assignments: list[AssignmentRule] = (),  # type: ignore[assignment]
    users: dict[str, tuple[str | None, bool, tuple[str, ...]]] | None = None,
    managers: dict[str, str] | None = None,
) -> Engine:
    policy = PolicySet(
        root="t",
        rules=tuple(
            Rule(s, d, o, a, parse_scope(sc), e, Source("t.csv", i + 1))  # type: ignore[arg-type]
            for i, (s, d, o, a, sc, e) in enumerate(rules)
        ),
        links=tuple(Link(m, r, d, SRC) for m, r, d in links),
        assignments=tuple(assignments),
        catalog=Catalog(),
        file_hashes={"t.csv": "1"},
    )
    users = users or {}
    directory = DirectorySnapshot(
        users={n: DirectoryUser(n, f"s-{n}", d, dis, g) for n, (d, dis, g) in users.items()},
        departments={p: m for p, m in (managers or {}).items()},
        groups=frozenset(g for _, _, gs in users.values() for g in gs),
        version="t",
    )
    return Engine(policy, directory, DOMAINS)


def both(e: Engine, *req: str) -> bool:
    """The engine's answer, asserted equal to pycasbin's."""
    ours = e.check(*req).allowed
    assert ours is reference_enforcer(e).enforce(*req), req
    return ours


def test_role_chains_stop_where_casbin_stops() -> None:
    # user -> r0 -> r1 -> ... -> r9: r8 is 9 links away (followed), r9 is 10 (not followed).
    links = [("user:u", "r0", "oa")] + [(f"r{i}", f"r{i + 1}", "oa") for i in range(9)]
    rules = [
        ("r8", "oa", "doc", "read", "all", "allow"),
        ("r9", "oa", "doc", "write", "all", "allow"),
    ]
    e = engine(rules, links, users={"u": ("/a", False, ())})
    assert both(e, "user:u", "oa", "doc", "read", "", "") is True
    assert both(e, "user:u", "oa", "doc", "write", "", "") is False


def test_manager_role_is_scoped_to_the_managed_department() -> None:
    rules = [("dept_manager", "reimburse", "report", "approve", "dept_tree", "allow")]
    e = engine(
        rules,
        assignments=[AssignmentRule("manager", "dept_manager", "reimburse", SRC)],
        users={"bob": ("/hq/it", False, ()), "alice": ("/hq/east/s1", False, ())},
        managers={"/hq/east": "bob", "/hq/it": None},  # type: ignore[dict-item]
    )
    assert both(e, "user:bob", "reimburse", "report", "approve", "alice", "/hq/east/s1")
    # bob's own department is not what the manager role covers
    assert not both(e, "user:bob", "reimburse", "report", "approve", "x", "/hq/it")
    assert not both(e, "user:alice", "reimburse", "report", "approve", "x", "/hq/east/s1")
    scope = e.scopes("user:bob", "reimburse", "report", "approve").to_json()
    assert scope["departments"] == [{"path": "/hq/east", "subtree": True}]


def test_star_domain_links_apply_everywhere_and_disabled_users_derive_nothing() -> None:
    rules = [("staff", "*", "notice", "read", "all", "allow")]
    e = engine(
        rules,
        links=[("user:carol", "staff", "*")],
        assignments=[AssignmentRule("group", "staff", "oa", SRC, "g")],
        users={
            "carol": (None, False, ()),
            "dan": (None, True, ("g",)),
            "eve": (None, False, ("g",)),
        },
    )
    for domain in DOMAINS:
        assert both(e, "user:carol", domain, "notice", "read", "", "")
    assert both(e, "user:eve", "oa", "notice", "read", "", "")
    assert not both(e, "user:eve", "reimburse", "notice", "read", "", "")
    assert not both(e, "user:dan", "oa", "notice", "read", "", "")
    assert e.roles_for("dan", "oa") == []
    assert e.roles_for("eve", "oa") == ["staff"]


def test_a_user_named_like_a_role_does_not_get_the_role() -> None:
    rules = [("admin", "*", "*", "*", "all", "allow")]
    e = engine(rules, users={"admin": (None, False, ())})
    assert not both(e, "user:admin", "oa", "doc", "delete", "", "")


def test_deny_beats_allow_and_explicit_subtrees() -> None:
    rules = [
        ("staff", "oa", "doc", "read", "all", "allow"),
        ("staff", "oa", "doc", "read", "dept:/hq/secret", "deny"),
    ]
    e = engine(rules, links=[("user:u", "staff", "oa")], users={"u": ("/hq", False, ())})
    assert both(e, "user:u", "oa", "doc", "read", "v", "/hq/open")
    assert not both(e, "user:u", "oa", "doc", "read", "v", "/hq/secret/x")
    assert both(e, "user:u", "oa", "doc", "read", "v", "/hq/secretary")
    decision = e.check("user:u", "oa", "doc", "read", "v", "/hq/secret")
    assert decision.reason == "denied by t.csv:2"
    scope = e.scopes("user:u", "oa", "doc", "read").to_json()
    assert scope == {
        "all": True,
        "self": False,
        "departments": [],
        "exclude": {"self": False, "departments": [{"path": "/hq/secret", "subtree": True}]},
    }


def test_scope_dept_is_only_the_users_own_department() -> None:
    rules = [("staff", "oa", "doc", "publish", "dept", "allow")]
    e = engine(rules, links=[("user:u", "staff", "oa")], users={"u": ("/hq/a", False, ())})
    assert both(e, "user:u", "oa", "doc", "publish", "", "/hq/a")
    assert not both(e, "user:u", "oa", "doc", "publish", "", "/hq/a/b")
    assert e.scopes("user:u", "oa", "doc", "publish").to_json()["departments"] == [
        {"path": "/hq/a", "subtree": False}
    ]


def test_explain_names_the_chain_and_the_winning_line() -> None:
    rules = [
        ("employee", "oa", "trip", "approve", "self", "deny"),
        ("manager", "oa", "trip", "approve", "dept_tree", "allow"),
    ]
    e = engine(
        rules,
        links=[("manager", "employee", "*")],
        assignments=[AssignmentRule("manager", "manager", "oa", Source("assignments.yaml", 4))],
        users={"bob": ("/hq/east", False, ())},
        managers={"/hq/east": "bob"},
    )
    result = e.explain("user:bob", "oa", "trip", "approve", "bob", "/hq/east")
    assert not result.decision.allowed
    assert result.decision.rule is not None and str(result.decision.rule.source) == "t.csv:1"
    chain = result.chains["employee"]
    assert [link.role for link in chain] == ["manager", "employee"]
    assert chain[0].origin == "manager of /hq/east (assignments.yaml:4)"
    assert {(str(m.rule.source), m.in_scope) for m in result.matches} == {
        ("t.csv:1", True),
        ("t.csv:2", True),
    }


def test_decide_walks_own_lines_roles_exact_and_star_domains_and_wildcards() -> None:
    """`decide`'s loop (no list of subjects, wildcard keys only for buckets holding them):
    every combination of the user's own lines, a role's, the exact and the `*` domain, exact
    and `*` types and actions, and a domain with no bucket at all, against pycasbin, with the
    deciding line."""
    e = engine(
        [
            ("user:ann", "oa", "doc", "read", "dept", "allow"),  # own line, home-relative
            ("staff", "*", "doc", "*", "all", "allow"),  # role, `*` domain, `*` action
            ("staff", "reimburse", "*", "approve", "self", "allow"),  # `*` type
            ("staff", "reimburse", "claim", "approve", "all", "deny"),  # deny beats allow
            ("lead", "oa", "doc", "delete", "dept_tree", "allow"),  # a second role
        ],
        links=[("user:ann", "staff", "*"), ("staff", "lead", "oa")],
        users={"ann": ("/hq/a", False, ())},
    )
    cases = [
        (("user:ann", "oa", "doc", "read", "", "/hq/a"), "t.csv:1"),
        (("user:ann", "oa", "doc", "read", "", "/hq/b"), "t.csv:2"),
        (("user:ann", "oa", "doc", "delete", "", "/hq/a/x"), "t.csv:2"),
        (("user:ann", "reimburse", "note", "approve", "ann", ""), "t.csv:3"),
        (("user:ann", "reimburse", "note", "approve", "bob", ""), None),
        (("user:ann", "reimburse", "claim", "approve", "ann", ""), "t.csv:4"),
        (("user:ann", "erp", "doc", "read", "", ""), None),  # not a configured domain
        (("user:bob", "oa", "doc", "read", "", ""), None),  # nobody
        (("staff", "oa", "doc", "write", "", ""), "t.csv:2"),  # a role asked directly
    ]
    for request, line in cases:
        decision = e.decide(*request)
        assert decision.source == line, request
        expected = reference_enforcer(e).enforce(*request)
        assert decision.allowed is expected, request
        assert decision == e.check(*request)
    # Lines only in `*` (none in the asked domain), then none in the asked domain nor `*`.
    star = engine(
        [("staff", "*", "doc", "read", "all", "allow")],
        links=[("user:ann", "staff", "*")],
        users={"ann": (None, False, ())},
    )
    assert star.decide("user:ann", "oa", "doc", "read").source == "t.csv:1"
    assert reference_enforcer(star).enforce("user:ann", "oa", "doc", "read", "", "") is True
    bare = engine(
        [("staff", "oa", "doc", "read", "all", "allow")], users={"ann": (None, False, ())}
    )
    assert bare.decide("user:ann", "reimburse", "doc", "read").source is None

"""Static segregation of duties: `sod.yaml` is read with file:line errors, and the analysis
reports exactly the violations a brute-force evaluation over every user finds, each path
really granting its side (hypothesis over random policies, directories and conflict rules)."""

from __future__ import annotations

import dataclasses
import shutil
from collections import deque
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idhub.adapters.policy_files import load_policy_dir
from idhub.core.authz.build import prepare_policy
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import (
    ANY,
    MAX_ROLE_DEPTH,
    AssignmentRule,
    Link,
    Rule,
    Source,
    parse_scope,
    user_subject,
)
from idhub.core.authz.sod_analysis import EVERYWHERE, SodAnalysis, analyse
from idhub.core.authz.sod_rules import ConflictRule, Side, SodException, SodPolicy
from idhub.core.identifiers import is_under
from tests.conftest import REPO
from tests.test_authz_differential import (
    ACTS,
    DOMAINS,
    OBJS,
    ROLES,
    assignments,
    directory_users,
    make_engine,
    managers,
    role_links,
    rules,
    user_links,
)

SHIPPED = ("oa", "reimburse", "erp", "archive", "idhub")
NOW = 1_800_000_000.0  # 2027-01-15


# ---------------------------------------------------------------------- the shipped policy


def test_shipped_policy_has_one_accepted_violation_with_every_path() -> None:
    policy, issues = load_policy_dir(REPO / "policies")
    assert issues == []
    assert policy.fixture is not None
    engine = Engine(policy, policy.fixture, SHIPPED)
    report = analyse(engine, now=NOW)
    assert [(v.rule.id, v.user, v.accepted) for v in report.violations] == [
        ("review-and-pay", "carol", True)
    ]
    carol = report.violations[0]
    by_side = {str(s): [" ; ".join(p.steps()) for p in ps] for s, ps in carol.paths.items()}
    assert by_side["reimburse:finance_reviewer"] == [
        "user:carol -> finance_reviewer in reimburse [group 财务审核组 (assignments.yaml:9)]"
    ]
    [pay] = by_side["reimburse:payment:execute"]
    assert "department /总部/财务部 and below (assignments.yaml:17)" in pay
    assert pay.endswith("(reimburse.csv:26)")
    # The exception expires at the end of its last day, then the violation blocks again.
    late = analyse(engine, now=carol.exception.expires_at if carol.exception else 0)
    assert late.violations[0].blocking and late.violations[0].expired is not None


def test_bad_sod_file_errors_name_file_and_line(tmp_path: Path) -> None:
    target = tmp_path / "p"
    shutil.copytree(REPO / "policies", target)
    (target / "sod.yaml").write_text(
        "conflicts:\n"
        "  - id: a\n"
        "    severity: stop\n"
        "    reason: x\n"
        "    sides: [reimburse:finance, erp:voucher:post]\n"
        "  - id: b\n"
        "    severity: block\n"
        "    reason: x\n"
        "    sides: [reimburse:nosuchrole, erp:voucher:fly]\n"
        "  - {id: c, severity: warn, reason: x, sides: [reimburse:finance]}\n"
        "exceptions:\n"
        "  - {rule: zzz, user: carol, approved_by: w, reason: r, expires: 2027-13-01}\n"
        "  - {rule: b, user: carol, approved_by: w, reason: r, expires: 2027-01-01}\n"
        "records:\n"
        "  - {id: r1, reason: x, domain: reimburse, type: expense_report, owner: boss,\n"
        "     steps: {created_by: [create], approved_by: [approve]}}\n",
        encoding="utf-8",
    )
    shipped, _ = load_policy_dir(REPO / "policies")
    assert shipped.fixture is not None
    outcome = prepare_policy(lambda: load_policy_dir(target), shipped.fixture, SHIPPED)
    assert not outcome.ok
    errors = "\n".join(outcome.errors)
    assert "sod.yaml:2: error: severity must be block or warn" in errors
    assert "sod.yaml:6: error: unknown role 'nosuchrole'" in errors
    assert "sod.yaml:6: error: unknown action 'fly' for 'voucher'" in errors
    assert "sod.yaml:10: error: `sides` must list at least two duties" in errors
    assert "sod.yaml:12: error: expires must be a date" in errors
    assert "sod.yaml:15: error: owner: 'boss' is not one of the rule's steps" in errors


def test_department_scope_needs_overlapping_departments() -> None:
    """Approving expenses for 华东区 and vouchers for 华南区 is no conflict under `scope:
    department`; approving both where the departments overlap is."""
    policy, _ = load_policy_dir(REPO / "policies")
    assert policy.fixture is not None
    src = Source("sod.yaml", 1)
    scoped = ConflictRule(
        "x",
        "block",
        "r",
        (Side("reimburse", role="dept_manager"), Side("reimburse", obj="payment", act="read")),
        src,
        "department",
    )
    base = dataclasses.replace(policy, sod=SodPolicy(conflicts=(scoped,)), canonical=False)
    for scope, expected in (("dept_tree", ["bob"]), ("dept:/总部/华南区", []), ("all", ["bob"])):
        line = Rule(
            "dept_manager", "reimburse", "payment", "read", parse_scope(scope), "allow", src
        )
        engine = Engine(
            dataclasses.replace(base, rules=(*policy.rules, line)), policy.fixture, SHIPPED
        )
        assert [v.user for v in analyse(engine, now=NOW).violations] == expected, scope


# ---------------------------------------------------------------------- property: brute force


def _roles(engine: Engine, username: str, domain: str) -> dict[str, set[str]]:
    """Roles of a user by a plain breadth-first walk over the derived links, each with the
    departments its scopes are relative to (the assignment's anchor or the home department)."""
    home = engine.directory.users[username].department
    out: dict[str, set[str]] = {}
    start = user_subject(username)
    for link in engine.links:
        if link.member != start or link.domain != domain:
            continue
        anchor = link.anchor or home
        seen = {link.role: 0}
        queue = deque([link.role])
        while queue:
            node = queue.popleft()
            out.setdefault(node, set()).update({anchor} if anchor else set())
            if seen[node] >= MAX_ROLE_DEPTH - 1:
                continue
            for other in engine.links:
                if other.member == node and other.domain == domain and other.role not in seen:
                    seen[other.role] = seen[node] + 1
                    queue.append(other.role)
    out.pop(start, None)
    return out


def _matches(rule: Rule, side: Side) -> bool:
    return (
        rule.domain in (side.domain, ANY)
        and rule.obj in (side.obj, ANY)
        and rule.act in (side.act, ANY)
    )


def _brute_held(engine: Engine, username: str, side: Side) -> set[str] | None:
    roles = _roles(engine, username, side.domain)
    if side.is_role:
        return roles[side.role] if side.role in roles else None
    home = engine.directory.users[username].department
    names = {user_subject(username): {home} if home else set(), **roles}
    lines = [r for r in engine.policy.rules if r.subject in names and _matches(r, side)]
    if any(r.effect == "deny" and r.scope.kind == "all" for r in lines):
        return None
    allows = [r for r in lines if r.effect == "allow"]
    if not allows:
        return None
    cover: set[str] = set()
    for r in allows:
        if r.scope.kind == "all":
            cover.add(EVERYWHERE)
        elif r.scope.kind == "subtree":
            cover.add(r.scope.path or "")
        else:
            cover |= names[r.subject]
    return cover


def _overlap(a: set[str], b: set[str]) -> bool:
    if (EVERYWHERE in a and b) or (EVERYWHERE in b and a):
        return True
    return any(is_under(x, y) or is_under(y, x) for x in a for y in b)


def brute_force(engine: Engine, sod: SodPolicy) -> set[tuple[str, str, frozenset[Side]]]:
    found = set()
    for username, user in engine.directory.users.items():
        if user.disabled:
            continue
        for rule in sod.conflicts:
            held = {s: _brute_held(engine, username, s) for s in rule.sides}
            mine = {s: c for s, c in held.items() if c is not None}
            if rule.scope == "department":
                mine = {
                    s: c
                    for s, c in mine.items()
                    if any(t != s and _overlap(c, d) for t, d in mine.items())
                }
            if len(mine) >= 2:
                found.add((rule.id, username, frozenset(mine)))
    return found


def _path_grants(
    engine: Engine, username: str, side: Side, links: tuple[Link, ...], line: Rule | None
) -> bool:
    edges = {(k.member, k.role, k.domain, k.source, k.anchor, k.origin) for k in engine.links}
    member = user_subject(username)
    if len(links) > MAX_ROLE_DEPTH:
        return False
    for link in links:
        if link.member != member or link.domain != side.domain or tuple(link) not in edges:
            return False
        member = link.role
    if side.is_role:
        return bool(links) and member == side.role and line is None
    return (
        line is not None
        and line in engine.policy.rules
        and line.effect == "allow"
        and line.subject == member
        and _matches(line, side)
    )


role_sides = st.builds(
    lambda d, r: Side(d, role=r), st.sampled_from(DOMAINS), st.sampled_from(ROLES)
)
perm_sides = st.builds(
    lambda d, o, a: Side(d, obj=o, act=a),
    st.sampled_from(DOMAINS),
    st.sampled_from([o for o in OBJS if o != ANY]),
    st.sampled_from([a for a in ACTS if a != ANY]),
)
conflicts = st.lists(
    st.tuples(
        st.lists(st.one_of(role_sides, perm_sides), min_size=2, max_size=3, unique=True),
        st.sampled_from(("anywhere", "department")),
        st.sampled_from(("block", "warn")),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rules, max_size=20),
    st.lists(role_links, max_size=6),
    st.lists(user_links, max_size=8),
    st.lists(assignments, min_size=1, max_size=4),
    directory_users,
    managers,
    conflicts,
)
def test_reported_violations_are_exactly_the_brute_force_ones(
    rule_list: list[Rule],
    links: list[Link],
    from_users: list[Link],
    from_directory: list[AssignmentRule],
    users: list[tuple[str, str | None, bool, set[str]]],
    managed: dict[str, str],
    drawn: list[tuple[list[Side], str, str]],
) -> None:
    src = Source("sod.yaml", 1)
    sod = SodPolicy(
        conflicts=tuple(
            ConflictRule(f"c{i}", severity, "r", tuple(sides), src, scope)  # type: ignore[arg-type]
            for i, (sides, scope, severity) in enumerate(drawn)
        )
    )
    engine = make_engine(rule_list, [*links, *from_users], from_directory, users, managed)
    analysis = SodAnalysis(engine, sod)
    report = analysis.run(now=NOW)
    got = {(v.rule.id, v.user, frozenset(v.sides)) for v in report.violations}
    assert got == brute_force(engine, sod)
    for v in report.violations:
        for side in v.sides:
            paths = v.paths[side]
            assert paths, f"{v.user} holds {side} by no path"
            for path in paths:
                assert _path_grants(engine, v.user, side, path.links, path.line), path.steps()


def test_exceptions_accept_until_their_last_day() -> None:
    policy, _ = load_policy_dir(REPO / "policies")
    assert policy.fixture is not None and policy.sod is not None
    carol = policy.sod.exceptions[0]
    soon = dataclasses.replace(carol, expires_at=NOW + 1)
    engine = Engine(
        dataclasses.replace(policy, sod=dataclasses.replace(policy.sod, exceptions=(soon,))),
        policy.fixture,
        SHIPPED,
    )
    assert analyse(engine, now=NOW).violations[0].accepted
    after = analyse(engine, now=NOW + 1).violations[0]
    assert after.blocking and after.expired == soon
    assert isinstance(carol, SodException) and carol.expires == "2029-12-31"

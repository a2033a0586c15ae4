"""`idhub policy test`: runs the cases in `policies/tests/` against the policy and the small
directory in `policies/tests/directory.yaml`, like unit tests for the policy.

A case gives a request and the expected decision (`expect: allow|deny`, decided as the
decision API decides, `actors:` of the record included), a user and the expected data scope
(`expect_scope`), or the roles a user should hold (`expect_roles`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idhub.core.authz.canonical import canonical_policy
from idhub.core.authz.data_scopes import DeptRef, ScopeSet
from idhub.core.authz.engine import Decision, Engine, RuleIndex
from idhub.core.authz.model import DirectorySnapshot, PolicyCase, PolicySet, user_subject
from idhub.core.authz.sod_dynamic import canonical_actors
from idhub.core.identifiers import canonical_name, canonical_path
from idhub.errors import InvalidInput


@dataclass(frozen=True)
class CaseResult:
    case: PolicyCase
    passed: bool
    detail: str

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.case.source} {self.case.name}" + (
            "" if self.passed else f": {self.detail}"
        )


def _refs(value: object) -> list[DeptRef] | None:
    """`["/a", {path: /b, subtree: false}]` -> refs; a bare string means the subtree."""
    if not isinstance(value, list):
        return None
    out: list[DeptRef] = []
    try:
        for item in value:
            if isinstance(item, str):
                out.append(DeptRef(canonical_path(item), True))
            elif isinstance(item, Mapping) and isinstance(item.get("path"), str):
                path = canonical_path(str(item["path"]))
                out.append(DeptRef(path, bool(item.get("subtree", True))))
            else:
                return None
    except InvalidInput:
        return None
    return sorted(out)


def _compare_scope(expected: Mapping[str, object], got: ScopeSet) -> str | None:
    problems: list[str] = []
    for key in ("all", "self"):
        if key in expected and bool(expected[key]) != getattr(got, key):
            problems.append(f"{key} is {getattr(got, key)}, expected {expected[key]}")
    if "departments" in expected:
        want = _refs(expected["departments"])
        if want is None:
            return "departments must be a list of paths or {path, subtree} mappings"
        have = sorted(got.departments)
        if want != have:
            problems.append(
                "departments are "
                + (", ".join(f"{r.path}{'/**' if r.subtree else ''}" for r in have) or "none")
                + ", expected "
                + (", ".join(f"{r.path}{'/**' if r.subtree else ''}" for r in want) or "none")
            )
    exclude = expected.get("exclude")
    if isinstance(exclude, Mapping):
        want = _refs(exclude.get("departments", []))
        if want is not None and want != sorted(got.exclude_departments):
            problems.append("excluded departments differ")
        if "self" in exclude and bool(exclude["self"]) != got.exclude_self:
            problems.append(f"exclude.self is {got.exclude_self}")
    return "; ".join(problems) or None


def run_case(engine: Engine, case: PolicyCase) -> CaseResult:
    username = canonical_name(case.user)
    if username not in engine.directory.users:
        return CaseResult(case, False, f"user {case.user!r} is not in tests/directory.yaml")
    subject = user_subject(username)
    problems: list[str] = []
    if case.expect is not None:
        decision = engine.check(subject, case.domain, case.obj, case.act, case.owner, case.dept)
        if decision.allowed:
            # As the decision API decides: an unknown or missing owner may be the user.
            denial = engine.owner_deny(
                subject,
                canonical_name(case.domain),
                canonical_name(case.obj),
                canonical_name(case.act),
                canonical_name(case.owner),
            )
            decision = Decision(False, denial) if denial is not None else decision
        reason = decision.reason
        if decision.allowed:
            # ...and as it applies dynamic segregation of duties (sod.yaml `records`).
            try:
                refusal = _record_refusal(engine, case, username)
            except InvalidInput as exc:
                return CaseResult(case, False, exc.message)
            if refusal is not None:
                decision, reason = Decision(False), refusal
        got = "allow" if decision.allowed else "deny"
        if got != case.expect:
            problems.append(f"expected {case.expect}, got {got} ({reason})")
    if case.expect_scope is not None:
        problem = _compare_scope(
            case.expect_scope, engine.scopes(subject, case.domain, case.obj, case.act)
        )
        if problem:
            problems.append(problem)
    if case.expect_roles is not None:
        have = engine.roles_for(username, case.domain)
        if sorted(canonical_name(r) for r in case.expect_roles) != have:
            problems.append(
                f"roles are [{', '.join(have)}], expected [{', '.join(sorted(case.expect_roles))}]"
            )
    return CaseResult(case, not problems, "; ".join(problems))


def _record_refusal(engine: Engine, case: PolicyCase, username: str) -> str | None:
    actors = canonical_actors(case.actors, engine.records.actor_names)
    refusal = engine.records.refusal(
        domain=canonical_name(case.domain),
        obj=canonical_name(case.obj),
        action=canonical_name(case.act),
        user=username,
        owner=canonical_name(case.owner),
        actors=actors,
    )
    return refusal.reason if refusal is not None else None


def run_policy_tests(
    policy: PolicySet,
    domains: tuple[str, ...],
    fixture: DirectorySnapshot | None = None,
    *,
    index: RuleIndex | None = None,
) -> list[CaseResult]:
    policy = canonical_policy(policy)
    directory = fixture or policy.fixture or DirectorySnapshot()
    engine = Engine(policy, directory, domains, index=index)
    return [run_case(engine, case) for case in policy.cases]

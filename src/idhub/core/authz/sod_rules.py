"""Segregation of duties (不相容职务分离): the rules of `policies/sod.yaml`.

Three kinds of entries, read by `adapters/sod_policy_yaml.py`:

* **conflicts**: duties one person must not hold together. Each side is a role in a domain
  (`reimburse:dept_manager`) or a permission in a domain (`reimburse:payment:execute`, held
  when an allow line for that type and action reaches the person). The sides of one rule
  are mutually exclusive: holding any two of them is a violation. With `scope: department`
  two sides only conflict where the departments they are held for overlap (one is the other
  or below it), e.g. approving and paying within the same region.
* **exceptions**: one person accepted to hold the sides of one rule, with who approved it,
  why, and the last day it holds (UTC); after that day it is a violation again.
* **records** (dynamic SoD): steps on one record that one person must not both perform.
  A decision names the actors of the record's earlier steps (`created_by`, `approved_by`,
  ...); an action that belongs to one step is denied to anyone who performed another step of
  the same rule on that record. `owner: created_by` makes the record's owner count as that
  actor when the actor is not given: "nobody approves their own report" is such a rule.

Everything here is canonical once `canonical_sod` ran (the policy loader calls it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from idhub.core.authz.model import ANY, Issue, Source
from idhub.core.identifiers import canonical_name

Severity = Literal["block", "warn"]
ConflictScope = Literal["anywhere", "department"]
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Side:
    """One duty: a role in a domain, or a permission (type, action) in a domain."""

    domain: str
    role: str = ""
    obj: str = ""
    act: str = ""

    @property
    def is_role(self) -> bool:
        return bool(self.role)

    def __str__(self) -> str:
        return f"{self.domain}:{self.role}" if self.role else f"{self.domain}:{self.obj}:{self.act}"


def parse_side(text: str) -> Side:
    """`domain:role` or `domain:type:action`; ValueError otherwise."""
    parts = [canonical_name(p) for p in text.split(":")]
    if len(parts) == 2 and all(parts):
        return Side(parts[0], role=parts[1])
    if len(parts) == 3 and all(parts):
        return Side(parts[0], obj=parts[1], act=parts[2])
    raise ValueError(
        f"side {text!r} must be domain:role (reimburse:finance) or domain:type:action "
        "(reimburse:payment:execute)"
    )


@dataclass(frozen=True, slots=True)
class ConflictRule:
    id: str
    severity: Severity
    reason: str
    sides: tuple[Side, ...]
    source: Source
    scope: ConflictScope = "anywhere"


@dataclass(frozen=True, slots=True)
class SodException:
    rule: str
    user: str
    approved_by: str
    reason: str
    # The first instant (epoch seconds, UTC) the exception no longer holds.
    expires_at: float
    expires: str
    source: Source

    def check_valid(self, now: float) -> bool:
        return now < self.expires_at


@dataclass(frozen=True, slots=True)
class RecordRule:
    """Dynamic SoD on one record type: each step is an actor role (`approved_by`) and the
    actions that perform it; no person performs two steps of one rule on one record."""

    id: str
    reason: str
    domain: str
    obj: str
    steps: tuple[tuple[str, tuple[str, ...]], ...]
    source: Source
    # The actor the record's owner stands for when that actor is not given ("" = none).
    owner: str = ""

    def step_of(self, action: str) -> str | None:
        for actor, actions in self.steps:
            if action in actions or ANY in actions:
                return actor
        return None


@dataclass(frozen=True)
class SodPolicy:
    conflicts: tuple[ConflictRule, ...] = ()
    exceptions: tuple[SodException, ...] = ()
    records: tuple[RecordRule, ...] = ()
    canonical: bool = dataclasses.field(default=False, compare=False)

    def exception_for(self, rule: str, user: str) -> SodException | None:
        for exc in self.exceptions:
            if exc.rule == rule and exc.user == user:
                return exc
        return None


EMPTY = SodPolicy(canonical=True)


def canonical_sod(sod: SodPolicy) -> SodPolicy:
    if sod.canonical:
        return sod
    name = canonical_name

    def side(s: Side) -> Side:
        return Side(name(s.domain), name(s.role), name(s.obj), name(s.act))

    return SodPolicy(
        conflicts=tuple(
            dataclasses.replace(r, id=name(r.id), sides=tuple(side(s) for s in r.sides))
            for r in sod.conflicts
        ),
        exceptions=tuple(
            dataclasses.replace(e, rule=name(e.rule), user=name(e.user)) for e in sod.exceptions
        ),
        records=tuple(
            dataclasses.replace(
                r,
                id=name(r.id),
                domain=name(r.domain),
                obj=name(r.obj),
                owner=name(r.owner),
                steps=tuple(
                    (name(actor), tuple(name(a) for a in actions)) for actor, actions in r.steps
                ),
            )
            for r in sod.records
        ),
        canonical=True,
    )


def check_sod(
    sod: SodPolicy,
    *,
    domains: tuple[str, ...],
    roles: Mapping[str, str],
    resources: Mapping[str, Mapping[str, frozenset[str]]],
    users: Callable[[str], bool] | None = None,
) -> list[Issue]:
    """Names in sod.yaml that the catalogue does not declare (errors, like policy lines), and
    exception users the directory does not know (warnings)."""
    issues: list[Issue] = []

    def err(message: str, source: Source) -> None:
        issues.append(Issue("error", message, source))

    def check_type(domain: str, obj: str, acts: tuple[str, ...], source: Source) -> None:
        if domain not in domains:
            err(f"unknown domain {domain!r} (configured: {', '.join(domains)})", source)
            return
        types = resources.get(domain, {})
        if obj not in types:
            err(f"unknown resource type {obj!r} in domain {domain!r}", source)
            return
        for act in acts:
            if act != ANY and act not in types[obj]:
                err(f"unknown action {act!r} for {obj!r}", source)

    ids: dict[str, Source] = {}
    for rule in sod.conflicts:
        if rule.id in ids:
            err(f"rule id {rule.id!r} is used twice (first at {ids[rule.id]})", rule.source)
        ids.setdefault(rule.id, rule.source)
        for s in rule.sides:
            if s.is_role:
                if s.domain not in domains:
                    err(f"unknown domain {s.domain!r} in side {s}", rule.source)
                if s.role not in roles:
                    err(
                        f"unknown role {s.role!r} in side {s} (declare it in catalog.yaml)",
                        rule.source,
                    )
            else:
                check_type(s.domain, s.obj, (s.act,), rule.source)
        if len(set(rule.sides)) != len(rule.sides):
            err(f"rule {rule.id!r} names the same side twice", rule.source)
    for record in sod.records:
        if record.id in ids:
            err(f"rule id {record.id!r} is used twice (first at {ids[record.id]})", record.source)
        ids.setdefault(record.id, record.source)
        check_type(
            record.domain,
            record.obj,
            tuple(a for _, acts in record.steps for a in acts),
            record.source,
        )
        actors = [actor for actor, _ in record.steps]
        if record.owner and record.owner not in actors:
            err(f"owner: {record.owner!r} is not one of the rule's steps", record.source)
        seen: dict[str, str] = {}
        for actor, actions in record.steps:
            for action in actions:
                if action in seen and seen[action] != actor:
                    err(
                        f"action {action!r} belongs to two steps ({seen[action]}, {actor})",
                        record.source,
                    )
                seen[action] = actor
    conflict_ids = {r.id for r in sod.conflicts}
    granted: set[tuple[str, str]] = set()
    for exc in sod.exceptions:
        if exc.rule not in conflict_ids:
            err(f"exception for unknown conflict rule {exc.rule!r}", exc.source)
        if (exc.rule, exc.user) in granted:
            err(f"a second exception for {exc.user!r} under {exc.rule!r}", exc.source)
        granted.add((exc.rule, exc.user))
        if users is not None and not users(exc.user):
            issues.append(
                Issue("warning", f"user {exc.user!r} is not in the directory", exc.source)
            )
    return issues

"""Static segregation-of-duties analysis: who holds two duties a conflict rule separates, and
every path by which they hold each one.

What "holds" means (the property test in tests/test_sod_analysis.py brute-forces exactly this):

* a role side `domain:role`: the role is among the user's roles in that domain, inherited
  ones included (`Engine.roles_of`), whether it comes from a static `g` line, a group,
  department or manager rule;
* a permission side `domain:type:action`: an allow line for that type and action (or `*`)
  in that domain (or `*`) belongs to the user or one of their roles there, and no deny line
  with scope `all` does (a `self` deny only takes away the user's own records, the duty stays).

Only enabled directory users are analysed (disabled users derive no roles). With a rule's
`scope: department`, two sides conflict only when the departments they are held for overlap:
a role is held for its anchor departments (the user's own department, or the one they
manage), a permission for its line's scope (`all`: everywhere, `dept:/X`: /X, `dept`,
`dept_tree` and `self`: the anchors of the role holding the line).

The work per user is a few dict lookups per role held (`core/authz/sod_index.py` inverts the
rules: role -> sides it is, subject -> sides its lines grant), and paths are walked only for
the users in violation (`core/authz/sod_paths.py`); figures in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from idhub.core.authz.engine import Engine
from idhub.core.authz.model import Rule, user_subject
from idhub.core.authz.sod_index import SideIndex
from idhub.core.authz.sod_paths import Path, PathFinder
from idhub.core.authz.sod_rules import EMPTY, ConflictRule, Side, SodException, SodPolicy
from idhub.core.identifiers import is_under

# A coverage entry standing for every department (a line with scope `all`).
EVERYWHERE = "*"


@dataclass(frozen=True)
class Violation:
    rule: ConflictRule
    user: str
    sides: tuple[Side, ...]
    paths: Mapping[Side, tuple[Path, ...]] = field(default_factory=dict)
    # A valid exception accepting it; an expired one is kept to say so.
    exception: SodException | None = None
    expired: SodException | None = None

    @property
    def accepted(self) -> bool:
        return self.exception is not None

    @property
    def blocking(self) -> bool:
        return self.rule.severity == "block" and not self.accepted

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule.id, self.user)

    def summary(self) -> str:
        state: str = "accepted by exception" if self.accepted else self.rule.severity
        if self.expired is not None:
            state += f"; its exception expired {self.expired.expires} ({self.expired.source})"
        sides = " and ".join(str(s) for s in self.sides)
        return (
            f"{self.user} holds {sides}: conflict rule {self.rule.id} ({self.rule.source}, "
            f"{state}): {self.rule.reason}"
        )

    def to_json(self) -> dict[str, object]:
        exc = self.exception or self.expired
        return {
            "user": self.user,
            "rule": self.rule.id,
            "severity": self.rule.severity,
            "reason": self.rule.reason,
            "source": str(self.rule.source),
            "accepted": self.accepted,
            "exception": None
            if exc is None
            else {
                "approved_by": exc.approved_by,
                "reason": exc.reason,
                "expires": exc.expires,
                "expired": self.expired is not None,
                "source": str(exc.source),
            },
            "sides": [
                {"side": str(s), "paths": [p.to_json() for p in self.paths.get(s, ())]}
                for s in self.sides
            ],
        }


@dataclass(frozen=True)
class SodReport:
    violations: tuple[Violation, ...] = ()
    # The analysis that made it, to fill in paths later (`with_paths`).
    analysis: Any = field(default=None, compare=False, repr=False)

    def with_paths(self, violation: Violation, *, now: float) -> Violation:
        if violation.paths or self.analysis is None:
            return violation
        done: Violation = self.analysis.complete(violation, now=now)
        return done

    def by_key(self) -> dict[tuple[str, str], Violation]:
        return {v.key: v for v in self.violations}

    @property
    def blocking(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.blocking)


# Sides held by one user: side number -> the departments it is held for (filled in only for
# sides of `scope: department` rules; an empty set elsewhere).
Held = dict[int, set[str]]


def _coverage(rule: Rule, anchors: tuple[str, ...]) -> tuple[str, ...]:
    kind = rule.scope.kind
    if kind == "all":
        return (EVERYWHERE,)
    if kind == "subtree":
        return (rule.scope.path or "",)
    return anchors


def _overlap(a: set[str], b: set[str]) -> bool:
    if not a or not b:
        return False
    if EVERYWHERE in a or EVERYWHERE in b:
        return True
    return any(is_under(x, y) or is_under(y, x) for x in a for y in b)


class SodAnalysis:
    """The conflict rules of one policy evaluated against one engine (policy + directory)."""

    def __init__(self, engine: Engine, sod: SodPolicy | None = None) -> None:
        self.engine = engine
        self.sod = sod or engine.policy.sod or EMPTY
        self.index = SideIndex(engine, self.sod.conflicts)
        self.finder = PathFinder(engine, self.index)

    def held(self, username: str) -> Held:
        """Every side of any rule the canonical user holds."""
        index = self.index
        subject = user_subject(username)
        home = self.engine.directory.users[username].department
        own = (home,) if home else ()
        scoped = index.scoped
        out: Held = {}
        denied: list[int] = []
        for domain in index.domains:
            relevant = index.relevant.get(domain)
            if not relevant:
                continue
            roles = self.engine.roles_of(subject, domain)
            by_role = index.role_sides.get(domain, {})
            grants = index.grants.get(domain, {})
            denies = index.denies.get(domain, {})
            # Most of a user's roles are no side and grant none: only the others are looked at.
            names = [(name, roles[name]) for name in relevant.intersection(roles)]
            if subject in relevant:
                names.append((subject, own))
            for name, anchors in names:
                for i in by_role.get(name, ()):
                    out.setdefault(i, set()).update(anchors if i in scoped else ())
                for i, rule in grants.get(name, ()):
                    cover = out.setdefault(i, set())
                    if i in scoped:
                        cover.update(_coverage(rule, anchors))
                found = denies.get(name)
                if found:
                    denied.extend(found)
        for i in denied:
            out.pop(i, None)
        return out

    def violations_of(self, username: str) -> list[Violation]:
        """The canonical user's violations (without paths), accepted ones included."""
        held = self.held(username)
        if len(held) < 2:
            return []
        index = self.index
        counts: dict[int, int] = {}
        for i in held:
            for position in index.rules_of[i]:
                counts[position] = counts.get(position, 0) + 1
        out: list[Violation] = []
        for position in sorted(p for p, n in counts.items() if n >= 2):
            rule = self.sod.conflicts[position]
            mine = [i for i in index.rule_sides[position] if i in held]
            if rule.scope == "department":
                mine = [i for i in mine if any(j != i and _overlap(held[i], held[j]) for j in mine)]
                if len(mine) < 2:
                    continue
            out.append(Violation(rule, username, tuple(index.sides[i] for i in mine)))
        return out

    def run(
        self, *, now: float, users: Iterable[str] | None = None, paths: bool = True
    ) -> SodReport:
        """Every violation among enabled directory users (or `users`), exceptions applied as
        of `now`, with every path of each side unless `paths` is False."""
        if not self.sod.conflicts:
            return SodReport()
        directory = self.engine.directory
        names = sorted(directory.users) if users is None else users
        found: list[Violation] = []
        for username in names:
            user = directory.users.get(username)
            if user is None or user.disabled:
                continue
            for violation in self.violations_of(username):
                found.append(self.complete(violation, now=now, paths=paths))
        return SodReport(tuple(found), self)

    def complete(self, violation: Violation, *, now: float, paths: bool = True) -> Violation:
        """The violation with its exception state and (unless `paths` is False) every path
        of each side."""
        exc = self.sod.exception_for(violation.rule.id, violation.user)
        valid = exc if exc is not None and exc.check_valid(now) else None
        expired = exc if exc is not None and valid is None else None
        found = dict(violation.paths)
        if paths:
            number = self.index.number
            found = {
                s: tuple(self.finder.paths(violation.user, number[s])) for s in violation.sides
            }
        return Violation(violation.rule, violation.user, violation.sides, found, valid, expired)


def analyse(
    engine: Engine, *, now: float, sod: SodPolicy | None = None, paths: bool = True
) -> SodReport:
    return SodAnalysis(engine, sod).run(now=now, paths=paths)


def added_blocking(new: SodReport, old: SodReport | None, *, now: float) -> list[Violation]:
    """Blocking violations of `new` that `old` (the policy serving) does not have, both judged
    at `now`: an exception that expired since `old` was made blocks in both, so its expiry
    alone does not reject a reload."""
    before = old.by_key() if old is not None else {}

    def blocked(v: Violation) -> bool:
        exc = v.exception or v.expired
        return v.rule.severity == "block" and (exc is None or not exc.check_valid(now))

    return [v for v in new.blocking if v.key not in before or not blocked(before[v.key])]

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

Users holding the same roles share the work: the sides held are computed once per distinct
role set (the engine shares one roles mapping among them), which keeps 20,000 users and 50
rules well under the 5 s the issue asks for (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from idhub.core.authz.engine import Engine
from idhub.core.authz.model import ANY, MAX_ROLE_DEPTH, Link, Rule, user_subject
from idhub.core.authz.sod_rules import EMPTY, ConflictRule, Side, SodException, SodPolicy
from idhub.core.identifiers import is_under

# A coverage entry standing for every department (a line with scope `all`).
EVERYWHERE = "*"
# Paths listed per side and user: enough to fix the assignment, bounded for role graphs with
# many parallel links.
MAX_PATHS = 20
_KEYS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True, slots=True)
class Path:
    """One way a user holds a side: a chain of role links (empty when the line names the user
    directly) and, for a permission side, the allow line at its end."""

    side: Side
    links: tuple[Link, ...]
    line: Rule | None = None

    def steps(self) -> list[str]:
        out = [
            f"{link.member} -> {link.role} in {link.domain} "
            f"[{link.source if link.origin == 'policy line' else link.origin}]"
            for link in self.links
        ]
        if self.line is not None:
            who = self.links[-1].role if self.links else self.line.subject
            out.append(
                f"{who} may {self.line.act} {self.line.obj} in {self.line.domain} "
                f"[{self.line.scope}] ({self.line.source})"
            )
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "links": [
                {
                    "member": link.member,
                    "role": link.role,
                    "domain": link.domain,
                    "from": link.origin,
                    "source": str(link.source),
                }
                for link in self.links
            ],
            "line": str(self.line.source) if self.line is not None else None,
            "text": " ; ".join(self.steps()),
        }


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

    def by_key(self) -> dict[tuple[str, str], Violation]:
        return {v.key: v for v in self.violations}

    @property
    def blocking(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.blocking)


# Sides held within one domain: side -> the departments it is held for.
Held = dict[Side, frozenset[str]]


class _Grants:
    """Per permission side, the subjects whose allow lines grant it (and the lines), and the
    subjects a deny-all line takes it from; computed once from the rule index."""

    def __init__(self, engine: Engine, sides: Iterable[Side]) -> None:
        self.allow: dict[Side, dict[str, list[Rule]]] = {}
        self.deny: dict[Side, set[str]] = {}
        buckets = engine.index.buckets
        for side in sides:
            allow: dict[str, list[Rule]] = {}
            deny: set[str] = set()
            keys = [((side.obj, ANY)[a], (side.act, ANY)[b]) for a, b in _KEYS]
            for (dom, subject), per in buckets.items():
                if dom not in (side.domain, ANY):
                    continue
                for key in keys:
                    for rule in per.get(key, ()):
                        if rule.effect == "allow":
                            allow.setdefault(subject, []).append(rule)
                        elif rule.scope.kind == "all":
                            deny.add(subject)
            self.allow[side], self.deny[side] = allow, deny


def _coverage(rule: Rule, anchors: tuple[str, ...]) -> tuple[str, ...]:
    kind = rule.scope.kind
    if kind == "all":
        return (EVERYWHERE,)
    if kind == "subtree":
        return (rule.scope.path or "",)
    return anchors


def _overlap(a: frozenset[str], b: frozenset[str]) -> bool:
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
        sides = {s for rule in self.sod.conflicts for s in rule.sides}
        self._by_domain: dict[str, list[Side]] = {}
        for side in sorted(sides, key=str):
            self._by_domain.setdefault(side.domain, []).append(side)
        self._grants = _Grants(engine, (s for s in sides if not s.is_role))
        self._held_memo: dict[tuple[str, int], Held] = {}

    # ------------------------------------------------------------------ holding

    def held(self, username: str) -> Held:
        """Every side of any rule the canonical user holds, with the departments it is held for."""
        subject = user_subject(username)
        home = self.engine.directory.users[username].department
        own = (home,) if home else ()
        out: Held = {}
        direct = any((dom, subject) in self.engine.index.buckets for dom in (*self._by_domain, ANY))
        for domain, sides in self._by_domain.items():
            roles = self.engine.roles_of(subject, domain)
            key = (domain, id(roles))
            found = None if direct else self._held_memo.get(key)
            if found is None:
                found = self._held_in(domain, sides, roles, subject, own)
                if not direct:
                    self._held_memo[key] = found
            out.update(found)
        return out

    def _held_in(
        self,
        domain: str,
        sides: list[Side],
        roles: Mapping[str, tuple[str, ...]],
        subject: str,
        own: tuple[str, ...],
    ) -> Held:
        out: Held = {}
        for side in sides:
            if side.is_role:
                if side.role in roles:
                    out[side] = frozenset(roles[side.role])
                continue
            allow, deny = self._grants.allow[side], self._grants.deny[side]
            names = [(subject, own), *roles.items()]
            if any(name in deny for name, _ in names):
                continue
            cover: set[str] = set()
            granted = False
            for name, anchors in names:
                for rule in allow.get(name, ()):
                    granted = True
                    cover.update(_coverage(rule, anchors))
            if granted:
                out[side] = frozenset(cover)
        return out

    def violations_of(self, username: str, held: Held | None = None) -> list[Violation]:
        """The canonical user's violations (without paths), accepted ones included."""
        held = self.held(username) if held is None else held
        out: list[Violation] = []
        if len(held) < 2:
            return out
        now_rules = self.sod.conflicts
        for rule in now_rules:
            mine = [s for s in rule.sides if s in held]
            if len(mine) < 2:
                continue
            if rule.scope == "department":
                mine = [s for s in mine if any(t != s and _overlap(held[s], held[t]) for t in mine)]
                if len(mine) < 2:
                    continue
            out.append(Violation(rule, username, tuple(mine)))
        return out

    def run(self, *, now: float, users: Iterable[str] | None = None) -> SodReport:
        """Every violation among enabled directory users (or `users`), with paths and
        exceptions applied as of `now`."""
        directory = self.engine.directory
        names = sorted(directory.users) if users is None else users
        found: list[Violation] = []
        if not self.sod.conflicts:
            return SodReport()
        for username in names:
            user = directory.users.get(username)
            if user is None or user.disabled:
                continue
            for violation in self.violations_of(username):
                found.append(self.complete(violation, now=now))
        return SodReport(tuple(found))

    def complete(self, violation: Violation, *, now: float) -> Violation:
        """The violation with every path of each side and its exception state."""
        paths = {s: tuple(self.paths(violation.user, s)) for s in violation.sides}
        exc = self.sod.exception_for(violation.rule.id, violation.user)
        valid = exc if exc is not None and exc.check_valid(now) else None
        expired = exc if exc is not None and valid is None else None
        return Violation(violation.rule, violation.user, violation.sides, paths, valid, expired)

    # ------------------------------------------------------------------ paths

    def chains(self, username: str, domain: str, target: str) -> list[tuple[Link, ...]]:
        """Every simple chain of links (at most the depth Casbin follows) from the user to
        `target` in `domain`, up to MAX_PATHS."""
        start = user_subject(username)
        out: list[tuple[Link, ...]] = []

        def walk(node: str, chain: tuple[Link, ...], seen: frozenset[str]) -> None:
            if len(out) >= MAX_PATHS or len(chain) >= MAX_ROLE_DEPTH:
                return
            for role, link in self.engine.links_from(node, domain):
                if role in seen:
                    continue
                step = (*chain, link)
                if role == target:
                    out.append(step)
                    if len(out) >= MAX_PATHS:
                        return
                walk(role, step, seen | {role})

        walk(start, (), frozenset((start,)))
        return out

    def paths(self, username: str, side: Side) -> list[Path]:
        if side.is_role:
            return [Path(side, chain) for chain in self.chains(username, side.domain, side.role)]
        out: list[Path] = []
        subject = user_subject(username)
        allow = self._grants.allow.get(side, {})
        for rule in allow.get(subject, ()):
            out.append(Path(side, (), rule))
        roles = self.engine.roles_of(subject, side.domain)
        for role in sorted(roles):
            for rule in allow.get(role, ()):
                for chain in self.chains(username, side.domain, role):
                    out.append(Path(side, chain, rule))
                    if len(out) >= MAX_PATHS:
                        return out
        return out[:MAX_PATHS]


def analyse(engine: Engine, *, now: float, sod: SodPolicy | None = None) -> SodReport:
    return SodAnalysis(engine, sod).run(now=now)


def added_blocking(new: SodReport, old: SodReport | None) -> list[Violation]:
    """Blocking violations of `new` that `old` (the policy serving) does not have."""
    before = old.by_key() if old is not None else {}
    return [v for v in new.blocking if v.key not in before or not before[v.key].blocking]

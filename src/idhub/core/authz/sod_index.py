"""The sides of a policy's conflict rules, numbered, and who grants each: built once per
analysis from the engine's rule index, so holding a side is a few dict lookups per role.

Per domain: role -> the role sides it is; subject -> the permission sides its allow lines
grant (with the line); subject -> the permission sides a deny line with scope `all` takes
away. Lines with `*` in the domain, type or action grant every side they match.
"""

from __future__ import annotations

from idhub.core.authz.engine import Engine
from idhub.core.authz.model import ANY, Rule
from idhub.core.authz.sod_rules import ConflictRule, Side

Grants = dict[str, dict[str, list[tuple[int, Rule]]]]


class SideIndex:
    def __init__(self, engine: Engine, conflicts: tuple[ConflictRule, ...]) -> None:
        self.sides: list[Side] = []
        self.number: dict[Side, int] = {}
        number = self.number
        for rule in conflicts:
            for side in rule.sides:
                if side not in number:
                    number[side] = len(self.sides)
                    self.sides.append(side)
        # rule position -> its side numbers; side number -> rule positions
        self.rule_sides = [tuple(number[s] for s in rule.sides) for rule in conflicts]
        self.rules_of: list[list[int]] = [[] for _ in self.sides]
        for position, ids in enumerate(self.rule_sides):
            for i in ids:
                self.rules_of[i].append(position)
        # Sides whose departments matter (in a `scope: department` rule).
        self.scoped = {
            i
            for r, ids in zip(conflicts, self.rule_sides, strict=True)
            for i in ids
            if r.scope == "department"
        }
        self.domains = sorted({s.domain for s in self.sides})
        self.role_sides: dict[str, dict[str, list[int]]] = {}
        self.grants: Grants = {}
        self.denies: dict[str, dict[str, list[int]]] = {}
        permissions: dict[tuple[str, str, str], list[int]] = {}
        for i, side in enumerate(self.sides):
            if side.is_role:
                self.role_sides.setdefault(side.domain, {}).setdefault(side.role, []).append(i)
            else:
                permissions.setdefault((side.domain, side.obj, side.act), []).append(i)
        if permissions:
            self._index_lines(engine, permissions)
        # Per domain, every name that is a side or grants or denies one.
        self.relevant: dict[str, frozenset[str]] = {
            domain: frozenset(
                [
                    *self.role_sides.get(domain, {}),
                    *self.grants.get(domain, {}),
                    *self.denies.get(domain, {}),
                ]
            )
            for domain in self.domains
        }

    def _index_lines(
        self, engine: Engine, permissions: dict[tuple[str, str, str], list[int]]
    ) -> None:
        for (dom, subject), per in engine.index.buckets.items():
            for (obj, act), first in per.items():
                rules = engine.index.rules_at(first)
                if ANY in (dom, obj, act):
                    ids = [
                        i
                        for (d, o, a), found in permissions.items()
                        if dom in (d, ANY) and obj in (o, ANY) and act in (a, ANY)
                        for i in found
                    ]
                else:
                    ids = permissions.get((dom, obj, act), [])
                for i in ids:
                    domain = self.sides[i].domain
                    for rule in rules:
                        if rule.effect == "allow":
                            self.grants.setdefault(domain, {}).setdefault(subject, []).append(
                                (i, rule)
                            )
                        elif rule.scope.kind == "all":
                            self.denies.setdefault(domain, {}).setdefault(subject, []).append(i)

    def lines(self, side: int, subject: str) -> list[Rule]:
        """The allow lines of `subject` granting side number `side`."""
        domain = self.sides[side].domain
        return [rule for i, rule in self.grants.get(domain, {}).get(subject, ()) if i == side]

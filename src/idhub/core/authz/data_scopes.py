"""Data scopes: "which rows may this person see?" as a filter a system turns into SQL.

A record is (owner, department path). It is visible when some allow line's scope covers it
and no deny line's scope does, which is exactly what a check on that record answers. The
answer is therefore: included owners/departments, minus excluded ones:

    visible = (all OR (self AND owner = me) OR dept IN included)
              AND NOT (exclude.self AND owner = me) AND NOT (dept IN excluded)

where "dept IN x" means equal to a path, or below it when the entry has `subtree`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from idhub.core.authz.model import Rule
from idhub.core.identifiers import is_under


@dataclass(frozen=True, slots=True, order=True)
class DeptRef:
    path: str
    subtree: bool

    def covers(self, dept: str) -> bool:
        return is_under(dept, self.path) if self.subtree else dept == self.path

    def covered_by(self, other: DeptRef) -> bool:
        """Everything this entry matches is matched by `other` too."""
        if other.subtree:
            return is_under(self.path, other.path)
        return not self.subtree and self.path == other.path

    def overlaps(self, other: DeptRef) -> bool:
        return (
            self.covered_by(other)
            or other.covered_by(self)
            or (self.subtree and other.subtree and is_under(other.path, self.path))
        )

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "subtree": self.subtree}


@dataclass(frozen=True)
class ScopeSet:
    all: bool = False
    self: bool = False
    departments: tuple[DeptRef, ...] = ()
    exclude_self: bool = False
    exclude_departments: tuple[DeptRef, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.all or self.self or self.departments)

    def allows(self, username: str | None, owner: str, dept: str) -> bool:
        mine = username is not None and owner != "" and owner == username
        included = (
            self.all
            or (self.self and mine)
            or (bool(dept) and any(d.covers(dept) for d in self.departments))
        )
        if not included:
            return False
        if self.exclude_self and mine:
            return False
        return not (dept and any(d.covers(dept) for d in self.exclude_departments))

    def to_json(self) -> dict[str, Any]:
        return {
            "all": self.all,
            "self": self.self,
            "departments": [d.to_json() for d in self.departments],
            "exclude": {
                "self": self.exclude_self,
                "departments": [d.to_json() for d in self.exclude_departments],
            },
        }


NOTHING = ScopeSet()


def _minimal(refs: set[DeptRef]) -> list[DeptRef]:
    """Drops entries another entry already covers."""
    ordered = sorted(refs, key=lambda r: (r.path.count("/"), not r.subtree, r.path))
    kept: list[DeptRef] = []
    for ref in ordered:
        if not any(ref.covered_by(k) for k in kept):
            kept.append(ref)
    return sorted(kept)


def _refs(rule: Rule, anchors: tuple[str, ...]) -> list[DeptRef]:
    kind = rule.scope.kind
    if kind == "dept":
        return [DeptRef(a, False) for a in anchors]
    if kind == "dept_tree":
        return [DeptRef(a, True) for a in anchors]
    if kind == "subtree" and rule.scope.path:
        return [DeptRef(rule.scope.path, True)]
    return []


def build_scope_set(candidates: Iterable[tuple[Rule, tuple[str, ...]]]) -> ScopeSet:
    """Combines the lines that apply to (user, domain, type, action) into one filter."""
    allow_all = allow_self = deny_self = False
    allow_refs: set[DeptRef] = set()
    deny_refs: set[DeptRef] = set()
    for rule, anchors in candidates:
        kind = rule.scope.kind
        if rule.effect == "deny":
            if kind == "all":
                return NOTHING
            if kind == "self":
                deny_self = True
            deny_refs.update(_refs(rule, anchors))
        else:
            if kind == "all":
                allow_all = True
            elif kind == "self":
                allow_self = True
            allow_refs.update(_refs(rule, anchors))
    excluded = _minimal(deny_refs)
    # An included entry wholly inside an excluded one adds nothing.
    included = [r for r in _minimal(allow_refs) if not any(r.covered_by(x) for x in excluded)]
    if allow_all:
        included = []
    else:
        # Exclusions that touch nothing included only add noise to the caller's WHERE.
        excluded = [x for x in excluded if allow_self or any(x.overlaps(r) for r in included)]
    if not (allow_all or allow_self or included):
        return NOTHING
    return ScopeSet(
        all=allow_all,
        self=allow_self,
        departments=tuple(included),
        exclude_self=deny_self and (allow_all or allow_self or bool(included)),
        exclude_departments=tuple(excluded),
    )

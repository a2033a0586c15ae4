"""Every path by which a user holds a side of a conflict rule: the chains of role links from
the user to the role (a static `g` line, a group, department or manager rule, inheritance),
and for a permission side the allow line at the end, each with its file:line."""

from __future__ import annotations

from dataclasses import dataclass

from idhub.core.authz.engine import Engine
from idhub.core.authz.model import MAX_ROLE_DEPTH, Link, Rule, user_subject
from idhub.core.authz.sod_index import SideIndex
from idhub.core.authz.sod_rules import Side

# Paths listed per side and user: enough to fix the assignment, bounded for role graphs with
# many parallel links.
MAX_PATHS = 20
# Steps of the walk over one user's links in one domain before settling for the shortest
# chain to each role (a dense role graph has more simple paths than anyone can read).
MAX_STEPS = 5000
Chain = tuple[Link, ...]


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


class PathFinder:
    def __init__(self, engine: Engine, index: SideIndex) -> None:
        self.engine = engine
        self.index = index
        self._memo: dict[tuple[str, str], dict[str, list[Chain]]] = {}

    def chains(self, username: str, domain: str) -> dict[str, list[Chain]]:
        """Role -> every simple chain of links (at most the depth Casbin follows) from the
        user to it in `domain`, up to MAX_PATHS each."""
        key = (username, domain)
        found = self._memo.get(key)
        if found is not None:
            return found
        start = user_subject(username)
        out: dict[str, list[Chain]] = {}
        steps = 0
        stack: list[tuple[str, Chain, frozenset[str]]] = [(start, (), frozenset((start,)))]
        while stack and steps < MAX_STEPS:
            node, chain, seen = stack.pop()
            if len(chain) >= MAX_ROLE_DEPTH:
                continue
            for role, link in reversed(self.engine.links_from(node, domain)):
                steps += 1
                if role in seen:
                    continue
                step = (*chain, link)
                bucket = out.setdefault(role, [])
                if len(bucket) < MAX_PATHS:
                    bucket.append(step)
                stack.append((role, step, seen | {role}))
        if stack:
            # Out of steps: every role still gets its shortest chain.
            for role, chain in self.engine.chains(start, domain).items():
                if chain and not out.get(role):
                    out[role] = [chain]
        for bucket in out.values():
            bucket.sort(key=len)
        self._memo[key] = out
        return out

    def paths(self, username: str, side_id: int) -> list[Path]:
        side = self.index.sides[side_id]
        chains = self.chains(username, side.domain)
        if side.is_role:
            return [Path(side, chain) for chain in chains.get(side.role, ())]
        out = [Path(side, (), rule) for rule in self.index.lines(side_id, user_subject(username))]
        roles = self.engine.roles_of(user_subject(username), side.domain)
        for role in sorted(roles):
            for rule in self.index.lines(side_id, role):
                out.extend(Path(side, chain, rule) for chain in chains.get(role, ()))
                if len(out) >= MAX_PATHS:
                    return out[:MAX_PATHS]
        return out

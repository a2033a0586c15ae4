"""The decision engine: one immutable index per (policy version, directory version).

pycasbin evaluates the model in `policies/model.conf` by scanning every policy line and
walking its role manager on each request; at enterprise size that takes hundreds of
milliseconds. `Engine` gives the same answers (a differential test pins this against plain
`casbin.Enforcer`) by looking only at the lines that can match:

* role links are columns of numbers (`core/authz/link_table.py`) chained per domain and
  member; the roles reachable from a set of direct assignments are computed once and shared
  by every user holding the same set;
* policy lines are bucketed by (domain, subject) and then (resource type, action), with
  `*` buckets looked up alongside the exact ones, exactly as the matcher's `||` does;
* deny beats allow (`some(allow) && !some(deny)`), so the first matching deny decides.

An `Engine` is built off to the side and never changes; `AuthzService` swaps whole engines.
It compiles the canonical spelling of the policy and the directory (`core/authz/canonical.py`);
`check`, `scopes`, `explain` and `roles_for` take any spelling and canonicalise their arguments
once, `decide` takes arguments that are canonical already (the decision API's questions are).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from idhub.core.authz.canonical import canonical_directory, canonical_policy
from idhub.core.authz.data_scopes import ScopeSet, build_scope_set
from idhub.core.authz.link_table import LinkTable
from idhub.core.authz.model import (
    ANY,
    MAX_ROLE_DEPTH,
    USER_PREFIX,
    DirectorySnapshot,
    Link,
    PolicySet,
    Rule,
    Scope,
    Source,
    parse_scope,
    scope_matches,
    user_subject,
    username_of,
)
from idhub.core.authz.rule_table import RuleTable
from idhub.core.authz.sod_dynamic import RecordIndex
from idhub.core.heap import give_back_freed_memory
from idhub.core.identifiers import (
    canonical_name,
    canonical_path,
    canonical_sub,
    canonical_subject,
    is_under,
)

_EMPTY: tuple[str, ...] = ()
# A subject's roles in one domain: role, anchors, role, anchors, ... (each role a name, each
# anchors a tuple of department paths); flat, as the decision loop reads it pair by pair.
RolesRow = tuple[Any, ...]
_USER_PREFIX_LEN = len(USER_PREFIX)


class Decision:
    """Allowed or not, and the line that decided: the deny that won, or the first allow that
    matched; no line when nothing matched.

    The engine names the line by its number in the `RuleTable`; its `Rule` is made only when
    asked for (`reason` and `source` need just the file and line)."""

    __slots__ = ("_line", "_rule", "_table", "allowed")

    def __init__(
        self,
        allowed: bool,
        rule: Rule | None = None,
        *,
        table: RuleTable | None = None,
        line: int = -1,
    ) -> None:
        self.allowed = allowed
        self._rule = rule
        self._table = table if line >= 0 else None
        self._line = line

    @property
    def rule(self) -> Rule | None:
        if self._rule is None and self._table is not None:
            self._rule = self._table.rule(self._line)
        return self._rule

    @property
    def source(self) -> str | None:
        """`file:line` of the deciding line, None when nothing matched."""
        if self._table is not None:
            return self._table.source(self._line)
        return str(self._rule.source) if self._rule is not None else None

    @property
    def reason(self) -> str:
        if self._table is not None:
            deny = self._table.deny[self._line]
        elif self._rule is not None:
            deny = self._rule.effect == "deny"
        else:
            return "no rule matched"
        return f"{'denied by' if deny else 'allowed by'} {self.source}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self.allowed == other.allowed and self.rule == other.rule

    def __hash__(self) -> int:
        return hash((self.allowed, self.rule))

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed!r}, rule={self.rule!r})"


# What `decide` answers when no line matched: nothing in it is ever changed, so one serves all.
_NO_MATCH = Decision(False)


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    anchors: tuple[str, ...]
    in_scope: bool


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    # role -> the chain of links that gives the subject that role (empty for the subject itself)
    chains: Mapping[str, tuple[Link, ...]]
    # every line with the right domain, type and action reachable from the subject's roles
    matches: tuple[Match, ...]


def derive_links(
    policy: PolicySet, directory: DirectorySnapshot, domains: tuple[str, ...]
) -> LinkTable:
    """Static links plus links derived from the assignment rules, with `*` expanded to every
    configured domain (that expansion is what the reference enforcer sees too)."""
    out = LinkTable()

    def add(
        member: str, role: str, domain: str, source: Source, anchor: str | None, origin: str
    ) -> None:
        if domain == ANY:
            for each in domains:
                out.add(member, role, each, source, anchor, origin)
        else:
            out.add(member, role, domain, source, anchor, origin)

    for link in policy.links:
        add(*link)
    enabled = [u for u in directory.users.values() if not u.disabled]
    # Indexes first: a rule per group over 20,000 users would otherwise scan them all.
    by_group: dict[str, list[str]] = {}
    by_dept: dict[str, list[str]] = {}
    for user in enabled:
        for group in user.groups:
            by_group.setdefault(group, []).append(user.username)
        if user.department is not None:
            by_dept.setdefault(user.department, []).append(user.username)
    # One `user:<name>` string per user, not one per derived link (a user is in many).
    subjects: dict[str, str] = {}

    def subject_of(username: str) -> str:
        subject = subjects.get(username)
        if subject is None:
            subject = subjects[username] = user_subject(username)
        return subject

    for rule in policy.assignments:
        origin = f"{rule.describe()} ({rule.source})"
        members: list[tuple[str, str | None]]
        if rule.kind == "everyone":
            members = [(u.username, None) for u in enabled]
        elif rule.kind == "group":
            members = [(name, None) for name in by_group.get(rule.match, ())]
        elif rule.kind == "department":
            if rule.subtree:
                paths = [p for p in by_dept if is_under(p, rule.match)]
            else:
                paths = [rule.match]
            members = [(name, None) for p in paths for name in by_dept.get(p, ())]
        else:
            members = []
            for path, manager in sorted(directory.departments.items()):
                boss = directory.users.get(manager) if manager else None
                if boss is not None and not boss.disabled:
                    members.append((boss.username, path))
        for username, anchor in members:
            where = origin if anchor is None else f"manager of {anchor} ({rule.source})"
            add(subject_of(username), rule.role, rule.domain, rule.source, anchor, where)
    out.done()
    return out


class RuleIndex:
    """Policy lines bucketed by (domain, subject), then (type, action), in file order.

    `buckets[(domain, subject)][(type, action)]` is the number of the first such line in the
    `RuleTable`; `next[line]` the number of the next one with the same four names, -1 after
    the last. Numbers, not `Rule`s: a million lines stay a few arrays and one small dict per
    (domain, subject), and the (type, action) keys are shared tuples.

    Depends on the policy only, so one index serves the policy tests, the live engine and
    every recompilation after a directory change."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        table = RuleTable.from_rules(rules)
        self.table = table
        count = len(table)
        following = array("i", [-1]) * count
        buckets: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        by_ids: dict[int, dict[tuple[str, str], int]] = {}
        pairs: dict[int, tuple[str, str]] = {}
        subjects, names = table.subjects, table.names
        width = len(names) + 1
        sub_col, dom_col, obj_col, act_col = table.subject, table.domain, table.obj, table.act
        # Backwards, putting each line in front of the ones after it: chains in file order.
        for i in range(count - 1, -1, -1):
            sub_id, dom_id = sub_col[i], dom_col[i]
            outer = sub_id * width + dom_id
            per = by_ids.get(outer)
            if per is None:
                key = (names[dom_id], subjects[sub_id])
                per = buckets.get(key)
                if per is None:
                    per = buckets[key] = {}
                by_ids[outer] = per
            inner_id = obj_col[i] * width + act_col[i]
            inner = pairs.get(inner_id)
            if inner is None:
                inner = pairs[inner_id] = (names[obj_col[i]], names[act_col[i]])
            first = per.get(inner)
            if first is not None:
                following[i] = first
            per[inner] = i
        self.buckets = buckets
        self.next = following

    def chain(self, first: int) -> Iterator[int]:
        """The line numbers of one (type, action) bucket, in file order."""
        following = self.next
        i = first
        while i >= 0:
            yield i
            i = following[i]

    def rules_at(self, first: int) -> list[Rule]:
        """The `Rule`s of one (type, action) bucket, in file order."""
        rule = self.table.rule
        return [rule(i) for i in self.chain(first)]


class Engine:
    def __init__(
        self,
        policy: PolicySet,
        directory: DirectorySnapshot,
        domains: tuple[str, ...],
        *,
        index: RuleIndex | None = None,
    ) -> None:
        """`index`, when given, was built from the rules of `canonical_policy(policy)`."""
        policy = canonical_policy(policy)
        directory = canonical_directory(directory)
        self.policy = policy
        self.directory = directory
        self.domains = tuple(dict.fromkeys(canonical_name(d) for d in domains))
        self.version = f"{policy.version}.{directory.version[:8]}"
        self.links = links = derive_links(policy, directory, domains)
        self._homes: dict[str, str] = {
            u.username: u.department for u in directory.users.values() if u.department
        }
        # domain -> member -> the number of its first link; `_link_next[i]` the member's next
        # link in that domain, -1 after the last (numbers, not lists of `Link`s: with the
        # columns, ~11 MB less at 100,000 lines)
        self._graph: dict[str, dict[str, int]] = {}
        following = array("i", [-1]) * len(links)
        texts, member_col, domain_col = links.texts, links.member, links.domain
        per_domain_id: dict[int, dict[str, int]] = {}
        # Backwards, putting each link in front of the ones after it: chains in link order.
        for i in range(len(links) - 1, -1, -1):
            dom_id = domain_col[i]
            by_member = per_domain_id.get(dom_id)
            if by_member is None:
                by_member = per_domain_id[dom_id] = self._graph.setdefault(texts[dom_id], {})
            member = texts[member_col[i]]
            first = by_member.get(member)
            if first is not None:
                following[i] = first
            by_member[member] = i
        self._link_next = following
        self.index = index or RuleIndex(policy.rules)
        # Dynamic segregation of duties (sod.yaml `records`), asked by the decision API.
        self.records = RecordIndex(policy.sod)
        self._buckets = self.index.buckets
        self._table = self.index.table
        self._next = self.index.next
        # domain -> subject -> (bucket, whether it has `*` types or actions): no (domain,
        # subject) tuple made per lookup, and one lookup instead of four where no line of the
        # bucket has a wildcard (the other three keys hold `*`, so they cannot be there)
        self._by_domain: dict[str, dict[str, tuple[dict[tuple[str, str], int], bool]]] = {}
        for (dom, name), per in self._buckets.items():
            wild = any(ANY in key for key in per)
            self._by_domain.setdefault(dom, {})[name] = (per, wild)
        # Per scope number: True for `all`, which matches without looking at the request.
        self._scope_all = tuple(scope.kind == "all" for scope in self._table.scopes)
        self._reach_memo: dict[tuple[str, str], dict[str, int]] = {}
        self._roles_memo: dict[tuple[str, frozenset[tuple[str, str | None]]], RolesRow] = {}
        # domain -> subject -> roles row (nested: no (domain, subject) key tuple per user)
        self._subject_roles: dict[str, dict[str, RolesRow]] = {}
        self._anchor_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._scope_cache: dict[str, Scope] = {}
        self._by_sub: dict[str, str] | None = None

    # ------------------------------------------------------------------ roles

    def _reach(self, domain: str, role: str) -> dict[str, int]:
        """Roles reachable from `role` within the depth pycasbin follows after the first link
        (the role itself at distance 0)."""
        key = (domain, role)
        cached = self._reach_memo.get(key)
        if cached is not None:
            return cached
        graph = self._graph.get(domain, {})
        following, role_of = self._link_next, self.links.role_of
        found: dict[str, int] = {role: 0}
        queue = deque([role])
        while queue:
            node = queue.popleft()
            depth = found[node]
            if depth >= MAX_ROLE_DEPTH - 1:
                continue
            i = graph.get(node, -1)
            while i >= 0:
                parent = role_of(i)
                if parent not in found:
                    found[parent] = depth + 1
                    queue.append(parent)
                i = following[i]
        self._reach_memo[key] = found
        return found

    def roles_of(self, subject: str, domain: str) -> dict[str, tuple[str, ...]]:
        """Every role canonical `subject` holds in canonical `domain` (not the subject itself),
        each with the departments its `dept`/`dept_tree` scopes are relative to."""
        row = self._roles_row(subject, domain)
        return dict(zip(row[::2], row[1::2], strict=True))

    def _roles_row(self, subject: str, domain: str) -> RolesRow:
        """`roles_of` as the engine keeps it: role, anchors, role, anchors, ... (a flat tuple
        is ~100 bytes less per user and domain than a dict: ~8 MB of RSS at 100,000 lines)."""
        per_domain = self._subject_roles.get(domain)
        if per_domain is None:
            per_domain = self._subject_roles.setdefault(domain, {})
        cached = per_domain.get(subject)
        if cached is not None:
            return cached
        memo_key = (domain, self._signature(subject, domain))
        roles = self._roles_memo.get(memo_key)
        if roles is None:
            roles = self._roles_memo[memo_key] = self._roles_by_signature(*memo_key)
        roles = self._own(subject, roles)
        per_domain[subject] = roles
        return roles

    def _signature(self, subject: str, domain: str) -> frozenset[tuple[str, str | None]]:
        """The subject's direct roles, each with the department it is anchored at."""
        username = username_of(subject)
        home = self._homes.get(username) if username is not None else None
        links, following = self.links, self._link_next
        direct: list[tuple[str, str | None]] = []
        i = self._graph.get(domain, {}).get(subject, -1)
        while i >= 0:
            direct.append((links.role_of(i), links.anchor_of(i) or home))
            i = following[i]
        return frozenset(direct)

    def _roles_by_signature(
        self, domain: str, signature: frozenset[tuple[str, str | None]]
    ) -> RolesRow:
        collected: dict[str, set[str]] = {}
        for role, anchor in signature:
            for reached in self._reach(domain, role):
                bucket = collected.setdefault(reached, set())
                if anchor is not None:
                    bucket.add(anchor)
        # Anchor tuples repeat across users (one per department): one copy each.
        shared = self._anchor_tuples
        row: list[Any] = []
        for r, a in collected.items():
            anchors = tuple(sorted(a))
            row += (r, shared.setdefault(anchors, anchors))
        return tuple(row)

    @staticmethod
    def _own(subject: str, row: RolesRow) -> RolesRow:
        # A role may link back to the subject's own name only through a cycle; the subject
        # itself is handled apart (it always matches itself, like pycasbin's has_link).
        if subject not in row:  # (an anchors tuple never equals a name)
            return row
        out: list[Any] = []
        for i in range(0, len(row), 2):
            if row[i] != subject:
                out += row[i : i + 2]
        return tuple(out)

    def links_from(self, member: str, domain: str) -> list[tuple[str, Link]]:
        """The role links whose member is canonical `member` in canonical `domain`."""
        return [(link.role, link) for link in self._links_of(member, domain)]

    def _links_of(self, member: str, domain: str) -> Iterator[Link]:
        links, following = self.links, self._link_next
        i = self._graph.get(domain, {}).get(member, -1)
        while i >= 0:
            yield links[i]
            i = following[i]

    def username_for_sub(self, sub: str) -> str | None:
        """The username of the directory user with this OIDC subject."""
        index = self._by_sub
        if index is None:
            index = self._by_sub = self.directory.by_sub()
        return index.get(canonical_sub(sub))

    def warm(self) -> None:
        """Computes every directory user's roles now, so no request pays for it.

        In two passes, so what is kept is not interleaved with what is thrown away: first
        every (domain, direct roles) signature with its users, then one roles dict per
        signature, handed to each of its users. The first pass's objects are freed together
        at the end and their memory goes back to the allocator in whole arenas, instead of
        leaving holes between the roles that stay (measured: 30 MB of RSS at 100,000 lines
        for 14 MB of roles)."""
        # One `user:<name>` string per user, the key of their roles in every domain.
        subjects = [user_subject(username) for username in self.directory.users]
        groups: dict[tuple[str, frozenset[tuple[str, str | None]]], list[str]] = {}
        # Equal rows from different signatures are kept once.
        rows: dict[RolesRow, RolesRow] = {}
        for domain in self.domains:
            known = self._subject_roles.get(domain, {})
            for subject in subjects:
                if subject not in known:
                    key = (domain, self._signature(subject, domain))
                    groups.setdefault(key, []).append(subject)
        for (domain, signature), members in groups.items():
            per_domain = self._subject_roles.setdefault(domain, {})
            roles = self._roles_memo.get((domain, signature))
            if roles is None:
                roles = self._roles_by_signature(domain, signature)
            roles = rows.setdefault(roles, roles)
            for subject in members:
                per_domain[subject] = self._own(subject, roles)
        del groups, subjects, rows
        # Every directory user's roles are kept per user now; the memo by direct assignments
        # only shared work between them (a user met later computes their own).
        self._roles_memo = {}
        give_back_freed_memory()

    def roles_for(self, username: str, domain: str) -> list[str]:
        return sorted(self.roles_of(user_subject(canonical_name(username)), canonical_name(domain)))

    def anchors(self, subject: str, domain: str, policy_subject: str) -> tuple[str, ...]:
        if policy_subject == subject:
            username = username_of(subject)
            home = self._homes.get(username) if username is not None else None
            return (home,) if home else _EMPTY
        row = self._roles_row(subject, domain)
        for i in range(0, len(row), 2):
            if row[i] == policy_subject:
                return row[i + 1]  # type: ignore[no-any-return]
        return _EMPTY

    def _subjects(self, subject: str, domain: str) -> Iterator[tuple[str, tuple[str, ...]]]:
        yield subject, self.anchors(subject, domain, subject)
        row = self._roles_row(subject, domain)
        for i in range(0, len(row), 2):
            yield row[i], row[i + 1]

    # ------------------------------------------------------------------ decisions

    def check(
        self, subject: str, domain: str, obj: str, act: str, owner: str = "", dept: str = ""
    ) -> Decision:
        """The decision on a request in any spelling; `InvalidInput` for a department path
        that is not one (`..`, empty segments)."""
        return self.decide(
            canonical_subject(subject),
            canonical_name(domain),
            canonical_name(obj),
            canonical_name(act),
            canonical_name(owner),
            canonical_path(dept),
        )

    def decide(
        self, subject: str, domain: str, obj: str, act: str, owner: str = "", dept: str = ""
    ) -> Decision:
        """The decision on a request whose every argument is canonical.

        The hot path of the decision API. At a million lines a request still looks at ~3
        subjects, ~2 buckets and ~1 line, so what it costs is the fixed work around them:
        nothing is built per call that the answer does not need (no list of subjects, no
        generator of domains, the three keys with a `*` only for a bucket that has such
        lines, one shared "nothing matched" answer)."""
        username = subject[_USER_PREFIX_LEN:] if subject.startswith(USER_PREFIX) else None
        per_subject = self._subject_roles.get(domain)
        roles = per_subject.get(subject) if per_subject is not None else None
        if roles is None:
            roles = self._roles_row(subject, domain)
        by_domain = self._by_domain
        exact, star = by_domain.get(domain), by_domain.get(ANY)
        if exact is None:
            if star is None:
                return _NO_MATCH
            domains: tuple[dict[str, tuple[dict[tuple[str, str], int], bool]], ...] = (star,)
        else:
            domains = (exact,) if star is None else (exact, star)
        table = self._table
        scopes, scope_col, deny_col, following = table.scopes, table.scope, table.deny, self._next
        everywhere = self._scope_all
        key = (obj, act)
        only = (key,)
        wild_keys: tuple[tuple[str, str], ...] | None = None
        allow = -1
        # The subject's own lines first (relative to the user's home department), then its
        # roles' (the order `_subjects` gives); for each, the exact domain's bucket, then `*`'s.
        home = self._homes.get(username) if username is not None else None
        name, anchors = subject, ((home,) if home else _EMPTY)
        others = iter(roles)
        while True:
            for per_domain in domains:
                found = per_domain.get(name)
                if found is None:
                    continue
                bucket, wild = found
                if wild and wild_keys is None:
                    wild_keys = (key, (obj, ANY), (ANY, act), (ANY, ANY))
                for k in wild_keys if wild else only:  # type: ignore[union-attr]
                    i = bucket.get(k, -1)
                    while i >= 0:
                        sc = scope_col[i]
                        if everywhere[sc] or scope_matches(
                            scopes[sc], username, anchors, owner, dept
                        ):
                            if deny_col[i]:
                                return Decision(False, table=table, line=i)
                            if allow < 0:
                                allow = i
                        i = following[i]
            role = next(others, None)
            if role is None:
                break
            name, anchors = role, next(others)
        return Decision(True, table=table, line=allow) if allow >= 0 else _NO_MATCH

    def owner_deny(self, subject: str, domain: str, obj: str, act: str, owner: str) -> Rule | None:
        """The deny on the user's own records (a `self` line) that would apply to canonical
        (subject, domain, type, action) when `owner` is not given or names no directory user:
        such a record may well be the user's own, so a deny on it must not miss; None when the
        owner is a directory user or no such line applies."""
        if owner and owner in self.directory.users:
            return None
        table = self._table
        for i, _anchors in self._candidate_lines(subject, domain, obj, act):
            if table.deny[i] and table.scopes[table.scope[i]].kind == "self":
                return table.rule(i)
        return None

    def candidates(
        self, subject: str, domain: str, obj: str, act: str
    ) -> list[tuple[Rule, tuple[str, ...]]]:
        """Every line that matches canonical subject, domain, type and action (scope not yet
        applied)."""
        rule = self._table.rule
        return [
            (rule(i), anchors) for i, anchors in self._candidate_lines(subject, domain, obj, act)
        ]

    def _candidate_lines(
        self, subject: str, domain: str, obj: str, act: str
    ) -> Iterator[tuple[int, tuple[str, ...]]]:
        """`candidates` as line numbers in the `RuleTable`."""
        keys = dict.fromkeys(((obj, act), (obj, ANY), (ANY, act), (ANY, ANY)))
        chain = self.index.chain
        for name, anchors in self._subjects(subject, domain):
            for dom in dict.fromkeys((domain, ANY)):
                bucket = self._buckets.get((dom, name))
                if bucket is None:
                    continue
                for key in keys:
                    first = bucket.get(key)
                    if first is not None:
                        for i in chain(first):
                            yield i, anchors

    def scopes(self, subject: str, domain: str, obj: str, act: str) -> ScopeSet:
        return build_scope_set(
            self.candidates(
                canonical_subject(subject),
                canonical_name(domain),
                canonical_name(obj),
                canonical_name(act),
            )
        )

    def explain(
        self, subject: str, domain: str, obj: str, act: str, owner: str = "", dept: str = ""
    ) -> Explanation:
        subject, domain = canonical_subject(subject), canonical_name(domain)
        obj, act = canonical_name(obj), canonical_name(act)
        owner, dept = canonical_name(owner), canonical_path(dept)
        username = username_of(subject)
        # In file and line order: the roles come from a set, and an admin (or a tutorial)
        # comparing two explanations should see the same table.
        matches = tuple(
            sorted(
                (
                    Match(rule, anchors, scope_matches(rule.scope, username, anchors, owner, dept))
                    for rule, anchors in self.candidates(subject, domain, obj, act)
                ),
                key=lambda match: match.rule.source,
            )
        )
        return Explanation(
            decision=self.decide(subject, domain, obj, act, owner, dept),
            chains=self.chains(subject, domain),
            matches=matches,
        )

    def chains(self, subject: str, domain: str) -> dict[str, tuple[Link, ...]]:
        """For each role the subject holds, one shortest chain of links that grants it."""
        chains: dict[str, tuple[Link, ...]] = {subject: ()}
        queue = deque([subject])
        while queue:
            node = queue.popleft()
            if len(chains[node]) >= MAX_ROLE_DEPTH:
                continue
            for link in self._links_of(node, domain):
                parent = link.role
                if parent not in chains:
                    chains[parent] = (*chains[node], link)
                    queue.append(parent)
        return chains

    def permissions(self, username: str) -> set[tuple[str, str, str, str, str]]:
        """(domain, type, action, effect, resolved scope) for every line that applies to the
        user, the unit `policy diff` compares."""
        subject = user_subject(canonical_name(username))
        table = self._table
        out: set[tuple[str, str, str, str, str]] = set()
        for domain in self.domains:
            for name, anchors in self._subjects(subject, domain):
                for dom in (domain, ANY):
                    for (obj, act), first in self._buckets.get((dom, name), {}).items():
                        for i in self.index.chain(first):
                            rule_scope = table.scopes[table.scope[i]]
                            effect = "deny" if table.deny[i] else "allow"
                            kind = rule_scope.kind
                            if kind in ("dept", "dept_tree"):
                                resolved = [f"{kind}:{a}" for a in anchors] or [f"{kind}:-"]
                            else:
                                resolved = [str(rule_scope)]
                            for scope in resolved:
                                out.add((domain, obj, act, effect, scope))
        return out

    # ------------------------------------------------------------------ pycasbin

    def scope_function(self) -> Callable[[str, str, str, str, str, str], bool]:
        """`scopeMatch` as registered with a pycasbin enforcer on the same model."""

        def scope_match(
            scope: str, subject: str, domain: str, policy_subject: str, owner: str, dept: str
        ) -> bool:
            parsed = self._scope_cache.get(scope)
            if parsed is None:
                parsed = self._scope_cache[scope] = parse_scope(scope)
            anchors = self.anchors(subject, domain, policy_subject)
            return scope_matches(parsed, username_of(subject), anchors, owner, dept)

        return scope_match

    def casbin_rows(self) -> tuple[list[list[str]], list[list[str]]]:
        """The effective `p` and `g` lines, as a plain pycasbin enforcer would load them."""
        return [r.row() for r in self.policy.rules], [
            [link.member, link.role, link.domain] for link in self.links
        ]


def explanation_json(
    engine: Engine, username: str, domain: str, result: Explanation, *, disabled: bool = False
) -> dict[str, Any]:
    """The explanation as plain data (shared with the decision API)."""
    decision = result.decision
    subject = user_subject(username)
    roles = engine.roles_of(subject, domain)
    return {
        "allowed": decision.allowed and not disabled,
        "reason": "user is disabled" if disabled else decision.reason,
        "rule": decision.source,
        "policy_version": engine.version,
        "roles": [
            {
                "role": role,
                "anchors": list(roles[role]),
                "chain": [
                    {
                        "role": link.role,
                        "member": link.member,
                        "from": link.origin,
                        "source": str(link.source),
                    }
                    for link in result.chains.get(role, ())
                ],
            }
            for role in sorted(roles)
        ],
        "lines": [
            {
                "effect": m.rule.effect,
                "source": str(m.rule.source),
                "subject": m.rule.subject,
                "domain": m.rule.domain,
                "type": m.rule.obj,
                "action": m.rule.act,
                "scope": str(m.rule.scope),
                "in_scope": m.in_scope,
                # Every line has its own file:line, so equal rules are the same line.
                "decisive": decision.rule == m.rule,
            }
            for m in result.matches
        ],
    }

"""`idhub policy check`: what is wrong (errors) or suspicious (warnings) in a policy.

Errors stop a policy from being loaded: unknown domains, roles, resource types or actions;
role inheritance cycles and chains longer than pycasbin follows; allow and deny on the same
tuple. Warnings do not: rules that can never match, duplicates, and names of groups,
departments or users the directory does not know (the directory changes independently).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from idhub.core.authz.canonical import canonical_directory, canonical_policy
from idhub.core.authz.model import (
    ANY,
    MAX_ROLE_DEPTH,
    USER_PREFIX,
    DirectorySnapshot,
    Issue,
    Link,
    PolicySet,
    Source,
    username_of,
)
from idhub.core.authz.sod_rules import check_sod
from idhub.core.authz.vocabulary import unknown_name


def _expand(domain: str, domains: tuple[str, ...]) -> tuple[str, ...]:
    return domains if domain == ANY else (domain,)


def check_loaded(
    policy: PolicySet,
    load_issues: list[Issue],
    domains: tuple[str, ...],
    directory: DirectorySnapshot | None = None,
) -> list[Issue]:
    """What the loader found, then the checks across files, unless a file could not be read
    at all: one broken catalog.yaml would otherwise bury its one error under a hundred
    "unknown role" follow-ons. The admin fixes the root cause and the next run checks the rest."""
    if any(issue.unreadable for issue in load_issues):
        return list(load_issues)
    return load_issues + check_policy(policy, domains, directory)


def check_policy(
    policy: PolicySet, domains: tuple[str, ...], directory: DirectorySnapshot | None = None
) -> list[Issue]:
    issues: list[Issue] = []
    # Names in the policy and the directory are compared in their canonical spelling.
    policy = canonical_policy(policy)
    directory = canonical_directory(directory) if directory is not None else None

    def err(message: str, source: Source) -> None:
        issues.append(Issue("error", message, source))

    def warn(message: str, source: Source) -> None:
        issues.append(Issue("warning", message, source))

    known_domains = set(domains)
    catalog = policy.catalog
    roles = set(catalog.roles)

    for domain in catalog.resources:
        if domain not in known_domains:
            err(
                f"catalog names domain {domain!r}, which is not configured "
                f"(settings [policy] domains: {', '.join(domains)})",
                Source("catalog.yaml", 1),
            )

    def check_domain(domain: str, source: Source) -> bool:
        if domain != ANY and domain not in known_domains:
            err(f"unknown domain {domain!r} (configured: {', '.join(domains)})", source)
            return False
        return True

    def check_member(member: str, source: Source) -> None:
        name = username_of(member)
        if name is None:
            if member not in roles:
                err(f"unknown role {member!r} (declare it in catalog.yaml)", source)
        elif directory is not None and name not in directory.users:
            warn(f"user {name!r} is not in the directory", source)

    # ---- policy lines
    # type -> actions, per domain; for `*` lines, the union over every domain
    types_of: dict[str, dict[str, frozenset[str]]] = {}
    for domain, per in catalog.resources.items():
        types_of[domain] = dict(per)
        union = types_of.setdefault(ANY, {})
        for obj, actions in per.items():
            union[obj] = union.get(obj, frozenset()) | actions
    seen: dict[tuple[str, ...], Source] = {}
    for rule in policy.rules:
        src = rule.source
        check_member(rule.subject, src)
        if not check_domain(rule.domain, src):
            continue
        types = types_of.get(rule.domain, {})
        if rule.obj != ANY and rule.obj not in types:
            err(f"unknown resource type {rule.obj!r} in domain {rule.domain!r}", src)
        elif rule.act != ANY and rule.obj != ANY and rule.act not in types[rule.obj]:
            err(
                f"unknown action {rule.act!r} for {rule.obj!r} "
                f"(known: {', '.join(sorted(types[rule.obj]))})",
                src,
            )
        elif (
            rule.act != ANY
            and rule.obj == ANY
            and not any(rule.act in acts for acts in types.values())
        ):
            err(f"unknown action {rule.act!r} in domain {rule.domain!r}", src)
        if rule.scope.kind == "subtree" and directory is not None:
            if rule.scope.path not in directory.departments:
                warn(f"department {rule.scope.path} is not in the directory", src)
        key = (rule.subject, rule.domain, rule.obj, rule.act, str(rule.scope))
        other = seen.get((*key, rule.effect))
        if other is not None:
            warn(f"duplicate of the line at {other}", src)
            continue
        opposite = seen.get((*key, "deny" if rule.effect == "allow" else "allow"))
        if opposite is not None:
            err(
                f"allow and deny on the same tuple ({', '.join(key)}): "
                f"this line and {opposite} contradict each other",
                src,
            )
        seen[(*key, rule.effect)] = src

    # ---- role links
    for link in policy.links:
        check_member(link.member, link.source)
        if link.role not in roles:
            err(f"unknown role {link.role!r} (declare it in catalog.yaml)", link.source)
        check_domain(link.domain, link.source)

    # ---- assignment rules
    for assign in policy.assignments:
        if assign.role not in roles:
            err(f"unknown role {assign.role!r} (declare it in catalog.yaml)", assign.source)
        check_domain(assign.domain, assign.source)
        if directory is None:
            continue
        if assign.kind == "group" and assign.match not in directory.groups:
            warn(f"group {assign.match!r} does not exist in the directory", assign.source)
        if assign.kind == "department" and assign.match not in directory.departments:
            warn(f"department {assign.match} does not exist in the directory", assign.source)

    if policy.sod is not None:
        issues.extend(
            check_sod(
                policy.sod,
                domains=domains,
                roles=catalog.roles,
                resources=catalog.resources,
                users=(lambda name: name in directory.users) if directory is not None else None,
            )
        )
    # ---- policy tests: a misspelt type or action would pass any `expect: deny` unnoticed
    for case in policy.cases:
        if case.obj and case.domain in known_domains:
            problem = unknown_name(catalog, case.domain, case.obj, case.act)
            if problem is not None:
                err(f"test {case.name!r}: {problem}", case.source)

    _check_role_graph(policy.links, domains, err)
    _check_reachable(policy, domains, warn)
    return issues


Report = Callable[[str, Source], None]


def _check_role_graph(links: tuple[Link, ...], domains: tuple[str, ...], report: Report) -> None:
    """Cycles and over-long chains among role-to-role links, per domain."""
    graph: dict[str, dict[str, list[tuple[str, Link]]]] = defaultdict(lambda: defaultdict(list))
    for link in links:
        if link.member.startswith(USER_PREFIX):
            continue
        for domain in _expand(link.domain, domains):
            graph[domain][link.member].append((link.role, link))
    reported: set[Source] = set()
    for domain in sorted(graph):
        walk = _Walk(domain, graph[domain], reported, report)
        for node in sorted(graph[domain]):
            if walk.visit(node, []) > MAX_ROLE_DEPTH - 1:
                first = graph[domain][node][0][1]
                if first.source not in reported:
                    reported.add(first.source)
                    report(
                        f"role chain from {node!r} in {domain} is longer than "
                        f"{MAX_ROLE_DEPTH - 1} links; Casbin stops following it",
                        first.source,
                    )


class _Walk:
    """Depth-first walk over one domain's role graph: longest chains, and cycles reported once."""

    def __init__(
        self,
        domain: str,
        edges: dict[str, list[tuple[str, Link]]],
        reported: set[Source],
        report: Report,
    ) -> None:
        self.domain = domain
        self.edges = edges
        self.reported = reported
        self.report = report
        self.depth: dict[str, int] = {}
        self.state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(self, node: str, path: list[Link]) -> int:
        if self.state.get(node) == 2:
            return self.depth[node]
        self.state[node] = 1
        longest = 0
        for parent, link in self.edges.get(node, ()):
            if self.state.get(parent) == 1:
                cycle = [*path, link]
                start = next((i for i, lk in enumerate(cycle) if lk.member == parent), 0)
                names = " -> ".join([lk.member for lk in cycle[start:]] + [parent])
                if link.source not in self.reported:
                    self.reported.add(link.source)
                    self.report(f"role inheritance cycle in {self.domain}: {names}", link.source)
                continue
            longest = max(longest, 1 + self.visit(parent, [*path, link]))
        self.state[node] = 2
        self.depth[node] = longest
        return longest


def _check_reachable(policy: PolicySet, domains: tuple[str, ...], report: Report) -> None:
    """Lines whose role nobody can hold in that domain can never match."""
    parents: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    held: dict[str, set[str]] = defaultdict(set)
    for link in policy.links:
        for domain in _expand(link.domain, domains):
            if link.member.startswith(USER_PREFIX):
                held[domain].add(link.role)
            else:
                parents[domain][link.member].add(link.role)
    for assign in policy.assignments:
        for domain in _expand(assign.domain, domains):
            held[domain].add(assign.role)
    reachable: dict[str, set[str]] = {}
    for domain in domains:
        seen = set(held[domain])
        stack = list(seen)
        while stack:
            for parent in parents[domain].get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        reachable[domain] = seen
    for rule in policy.rules:
        if rule.subject.startswith(USER_PREFIX):
            continue
        targets = _expand(rule.domain, domains)
        if not any(rule.subject in reachable.get(d, ()) for d in targets):
            where = "any domain" if rule.domain == ANY else rule.domain
            report(
                f"nobody can hold role {rule.subject!r} in {where}: this line can never match",
                rule.source,
            )

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
from idhub.core.authz.rule_table import RuleTable
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
    _check_lines(
        RuleTable.from_rules(policy.rules),
        issues,
        types_of,
        check_member,
        check_domain,
        lambda path: directory is None or path in directory.departments,
    )

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
    table = RuleTable.from_rules(policy.rules)
    subjects, names = table.subjects, table.names
    # Per distinct (subject, domain), then the lines of the pairs nobody can hold.
    unreachable: dict[tuple[int, int], str] = {}
    for sub_id, dom_id in set(zip(table.subject, table.domain, strict=True)):
        subject, domain = subjects[sub_id], names[dom_id]
        if subject.startswith(USER_PREFIX):
            continue
        targets = _expand(domain, domains)
        if not any(subject in reachable.get(d, ()) for d in targets):
            where = "any domain" if domain == ANY else domain
            unreachable[(sub_id, dom_id)] = (
                f"nobody can hold role {subject!r} in {where}: this line can never match"
            )
    if not unreachable:
        return
    for i, pair in enumerate(zip(table.subject, table.domain, strict=True)):
        message = unreachable.get(pair)
        if message is not None:
            report(message, Source(table.files[table.file[i]], table.line[i]))


def _check_lines(
    table: RuleTable,
    issues: list[Issue],
    types_of: dict[str, dict[str, frozenset[str]]],
    check_member: Callable[[str, Source], None],
    check_domain: Callable[[str, Source], bool],
    department_known: Callable[[str | None], bool],
) -> None:
    """Names, types, actions and scopes of every policy line, and duplicate or contradicting
    lines, reported in file order.

    Each distinct subject, domain, (domain, type, action) and scope is checked once; then
    only the lines holding one that reported something, or sharing all five with another
    line, are checked one by one with their own file:line. A million lines use a few
    thousand names, so the lines of a good policy are never visited one by one here."""
    subjects, names = table.subjects, table.names
    probe = Source("", 0)

    def quiet(check: Callable[[str, Source], object], value: str) -> bool:
        """Whether `check` reports nothing about `value` (what it reports is taken back)."""
        before = len(issues)
        check(value, probe)
        said = len(issues) > before
        del issues[before:]
        return not said

    bad_subjects = {s for s in set(table.subject) if not quiet(check_member, subjects[s])}
    bad_domains = {d for d in set(table.domain) if not quiet(check_domain, names[d])}
    bad_types = {
        key
        for key in set(zip(table.domain, table.obj, table.act, strict=True))
        if key[0] not in bad_domains
        and _type_problem(types_of, names[key[0]], names[key[1]], names[key[2]]) is not None
    }
    bad_scopes = {
        n
        for n, scope in enumerate(table.scopes)
        if scope.kind == "subtree" and not department_known(scope.path)
    }
    lines = _repeated_lines(table, bad_domains)
    if bad_subjects or bad_domains or bad_types or bad_scopes:
        for i, (sub_id, dom_id, obj_id, act_id, scope_id) in enumerate(
            zip(table.subject, table.domain, table.obj, table.act, table.scope, strict=True)
        ):
            if (
                sub_id in bad_subjects
                or dom_id in bad_domains
                or scope_id in bad_scopes
                or (dom_id, obj_id, act_id) in bad_types
            ):
                lines.add(i)
    first: dict[tuple[int, ...], int] = {}
    for i in sorted(lines):
        rule = table.rule(i)
        src = rule.source
        check_member(rule.subject, src)
        if not check_domain(rule.domain, src):
            continue
        problem = _type_problem(types_of, rule.domain, rule.obj, rule.act)
        if problem is not None:
            issues.append(Issue("error", problem, src))
        if table.scope[i] in bad_scopes:
            issues.append(
                Issue("warning", f"department {rule.scope.path} is not in the directory", src)
            )
        key = (table.subject[i], table.domain[i], table.obj[i], table.act[i], table.scope[i])
        earlier = first.get((*key, table.deny[i]))
        if earlier is not None:
            issues.append(
                Issue("warning", f"duplicate of the line at {table.rule(earlier).source}", src)
            )
            continue
        opposite = first.get((*key, 1 - table.deny[i]))
        if opposite is not None:
            shown = (rule.subject, rule.domain, rule.obj, rule.act, str(rule.scope))
            issues.append(
                Issue(
                    "error",
                    f"allow and deny on the same tuple ({', '.join(shown)}): "
                    f"this line and {table.rule(opposite).source} contradict each other",
                    src,
                )
            )
        first[(*key, table.deny[i])] = i


def _type_problem(
    types_of: dict[str, dict[str, frozenset[str]]], domain: str, obj: str, act: str
) -> str | None:
    types = types_of.get(domain, {})
    if obj != ANY and obj not in types:
        return f"unknown resource type {obj!r} in domain {domain!r}"
    if act != ANY and obj != ANY and act not in types[obj]:
        return f"unknown action {act!r} for {obj!r} (known: {', '.join(sorted(types[obj]))})"
    if act != ANY and obj == ANY and not any(act in acts for acts in types.values()):
        return f"unknown action {act!r} in domain {domain!r}"
    return None


def _repeated_lines(table: RuleTable, bad_domains: set[int]) -> set[int]:
    """The lines (of a known domain) sharing subject, domain, type, action and scope with
    another: the only ones that can be duplicates or contradictions. Found by sorting one
    number per line rather than keeping a dict of a million tuples."""
    width = len(table.names) + 1
    scopes = len(table.scopes) + 1
    keys = [
        (((s * width + d) * width + o) * width + a) * scopes + sc
        for s, d, o, a, sc in zip(
            table.subject, table.domain, table.obj, table.act, table.scope, strict=True
        )
    ]
    repeated: set[int] = set()
    previous = -1
    for key in sorted(keys):
        if key == previous:
            repeated.add(key)
        previous = key
    if not repeated:
        return set()
    return {
        i for i, key in enumerate(keys) if key in repeated and table.domain[i] not in bad_domains
    }

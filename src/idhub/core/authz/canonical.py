"""Policies and directory snapshots in canonical spelling (`core/identifiers.py`).

The engine compiles only canonical data, and requests are canonicalised before they are
matched, so a name matches exactly when its canonical forms are equal. Both functions are
idempotent and return their argument when it is canonical already (the policy loader and the
engine both call them; only the first pays). A policy or directory path that cannot be made
canonical raises `InvalidInput`; the policy loader reports those with file:line first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from idhub.core.authz.model import (
    AssignmentRule,
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    Link,
    PolicySet,
    Rule,
    Scope,
)
from idhub.core.authz.rule_table import RuleTable
from idhub.core.authz.sod_rules import canonical_sod
from idhub.core.identifiers import canonical_name, canonical_path, canonical_subject
from idhub.errors import InvalidInput


def _memo(convert: Callable[[str], str]) -> Callable[[str], str]:
    """`convert` remembered per input: a large policy repeats the same few hundred names."""
    seen: dict[str, str] = {}

    def run(text: str) -> str:
        found = seen.get(text)
        if found is None:
            found = seen[text] = convert(text)
        return found

    return run


def canonical_policy(policy: PolicySet) -> PolicySet:
    if policy.canonical:
        return policy
    name = _memo(canonical_name)
    subject = _memo(canonical_subject)
    path = _memo(canonical_path)
    scopes: dict[Scope, Scope] = {}

    def scope(value: Scope) -> Scope:
        found = scopes.get(value)
        if found is None:
            found = scopes[value] = (
                Scope("subtree", path(value.path or "")) if value.kind == "subtree" else value
            )
        return found

    rules: Sequence[Rule]
    if isinstance(policy.rules, RuleTable):
        # Only the distinct names are respelt; the lines' columns are shared.
        table = policy.rules
        rules = (
            table
            if table.canonical
            else table.with_tables(
                subjects=tuple(subject(s) for s in table.subjects),
                names=tuple(name(n) for n in table.names),
                scopes=tuple(scope(s) for s in table.scopes),
                canonical=True,
            )
        )
    else:
        rules = tuple(
            Rule(
                subject(r.subject),
                name(r.domain),
                name(r.obj),
                name(r.act),
                scope(r.scope),
                r.effect,
                r.source,
            )
            for r in policy.rules
        )
    links = tuple(
        Link(
            subject(k.member),
            name(k.role),
            name(k.domain),
            k.source,
            path(k.anchor) if k.anchor else k.anchor,
            k.origin,
        )
        for k in policy.links
    )
    assignments = tuple(
        AssignmentRule(
            a.kind,
            name(a.role),
            name(a.domain),
            a.source,
            path(a.match) if a.kind == "department" else name(a.match),
            a.subtree,
        )
        for a in policy.assignments
    )
    catalog = Catalog(
        roles={name(role): text for role, text in policy.catalog.roles.items()},
        resources={
            name(domain): {
                name(obj): frozenset(name(act) for act in actions) for obj, actions in per.items()
            }
            for domain, per in policy.catalog.resources.items()
        },
        sources={
            ("role:" + name(key[5:]) if key.startswith("role:") else key): source
            for key, source in policy.catalog.sources.items()
        },
    )
    cases = tuple(
        dataclasses.replace(
            c,
            user=name(c.user),
            domain=name(c.domain),
            obj=name(c.obj),
            act=name(c.act),
            owner=name(c.owner),
            dept=path(c.dept),
            expect_roles=(
                tuple(name(r) for r in c.expect_roles) if c.expect_roles is not None else None
            ),
        )
        for c in policy.cases
    )
    return dataclasses.replace(
        policy,
        rules=rules,
        links=links,
        assignments=assignments,
        catalog=catalog,
        cases=cases,
        fixture=canonical_directory(policy.fixture) if policy.fixture is not None else None,
        sod=canonical_sod(policy.sod) if policy.sod is not None else None,
        canonical=True,
    )


def canonical_directory(directory: DirectorySnapshot) -> DirectorySnapshot:
    """The snapshot keyed by canonical usernames. Users whose names fold to the same canonical
    name are left out and listed as `ambiguous` (decided on as nobody), and a department path
    that cannot be made canonical counts as no department: both fail closed."""
    if directory.canonical:
        return directory
    name = _memo(canonical_name)

    def path(text: str | None) -> str | None:
        if not text:
            return None
        try:
            return canonical_path(text)
        except InvalidInput:
            return None

    users: dict[str, DirectoryUser] = {}
    ambiguous: set[str] = set(directory.ambiguous)
    for user in directory.users.values():
        key = name(user.username)
        if key in users or key in ambiguous:
            users.pop(key, None)
            ambiguous.add(key)
            continue
        users[key] = DirectoryUser(
            username=key,
            sub=user.sub,
            department=path(user.department),
            disabled=user.disabled,
            groups=tuple(sorted({name(g) for g in user.groups})),
        )
    departments: dict[str, str | None] = {}
    for dept, manager in directory.departments.items():
        canonical = path(dept)
        if canonical is not None:
            departments[canonical] = name(manager) if manager else None
    return DirectorySnapshot(
        users=users,
        departments=departments,
        groups=frozenset(name(g) for g in directory.groups),
        version=directory.version,
        ambiguous=frozenset(ambiguous),
        canonical=True,
    )

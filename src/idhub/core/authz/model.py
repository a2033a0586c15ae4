"""The vocabulary of a policy: rules, role links, assignment rules, the catalogue of roles and
resources, policy tests, and the directory facts roles are derived from.

Everything here is plain frozen data; files are read by `adapters/policy_files.py`, and the
engine (`core/authz/engine.py`) compiles a `PolicySet` plus a `DirectorySnapshot` into an index.
Subjects that are people carry the prefix `user:` so a user can never be mistaken for a role
(a user called "admin" is `user:admin`, not the role `admin`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

from idhub.core.authz.mfa_roles import MfaRoleRule
from idhub.core.identifiers import canonical_name, canonical_path, is_under
from idhub.errors import InvalidInput

if TYPE_CHECKING:
    from idhub.core.authz.sod_rules import SodPolicy

USER_PREFIX = "user:"
ANY = "*"
MAX_ROLE_DEPTH = 9  # pycasbin's default role manager follows at most 9 links (level 10)

# The one model idhub indexes. `policy check` insists the model file says exactly this (up to
# whitespace), because the index must give the same answer as pycasbin on this model.
CANONICAL_MODEL: dict[str, dict[str, str]] = {
    "request_definition": {"r": "sub, dom, obj, act, owner, dept"},
    "policy_definition": {"p": "sub, dom, obj, act, scope, eft"},
    "role_definition": {"g": "_, _, _"},
    "policy_effect": {"e": "some(where (p.eft == allow)) && !some(where (p.eft == deny))"},
    "matchers": {
        "m": 'g(r.sub, p.sub, r.dom) && (p.dom == r.dom || p.dom == "*")'
        ' && (p.obj == r.obj || p.obj == "*") && (p.act == r.act || p.act == "*")'
        " && scopeMatch(p.scope, r.sub, r.dom, p.sub, r.owner, r.dept)"
    },
}

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
Effect = Literal["allow", "deny"]
ScopeKind = Literal["all", "self", "dept", "dept_tree", "subtree"]
AssignmentKind = Literal["everyone", "group", "department", "manager"]


def canonical_model_text() -> str:
    out: list[str] = []
    for section, entries in CANONICAL_MODEL.items():
        out.append(f"[{section}]")
        out.extend(f"{key} = {value}" for key, value in entries.items())
        out.append("")
    return "\n".join(out)


class Source(NamedTuple):
    """Where something was written: shown to admins as `file:line`."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind
    path: str | None = None

    def __str__(self) -> str:
        return f"dept:{self.path}" if self.kind == "subtree" else self.kind


ALL = Scope("all")


def parse_scope(text: str) -> Scope:
    """`all`, `self`, `dept`, `dept_tree` or `dept:/A/B` (that subtree, its path canonical);
    ValueError otherwise."""
    value = text.strip()
    kind = canonical_name(value)
    if kind in ("all", "self", "dept", "dept_tree"):
        return Scope(kind)  # type: ignore[arg-type]
    if kind.startswith("dept:"):
        # The colon as written (full-width or not): the path is what follows it.
        colon = next(i for i, ch in enumerate(value) if unicodedata.normalize("NFKC", ch) == ":")
        try:
            return Scope("subtree", canonical_path(value[colon + 1 :]))
        except InvalidInput as exc:
            raise ValueError(
                f"department scope {text!r} must look like dept:/总部/华东区: {exc.message}"
            ) from None
    raise ValueError(f"unknown data scope {text!r} (use all, self, dept, dept_tree or dept:/path)")


def scope_matches(
    scope: Scope, username: str | None, anchors: tuple[str, ...], owner: str, dept: str
) -> bool:
    """Whether a resource (owner, department path) lies inside `scope` for this user.

    `anchors` are the departments the scope is relative to: the user's own department, or
    the department a manager-derived role is scoped to. Every argument is canonical
    (`core/identifiers.py`), so equal text is the same name and "under" is segment-wise.
    """
    kind = scope.kind
    if kind == "all":
        return True
    if kind == "self":
        return username is not None and owner != "" and owner == username
    if not dept:
        return False
    if kind == "dept":
        return dept in anchors
    if kind == "dept_tree":
        return any(is_under(dept, anchor) for anchor in anchors)
    return is_under(dept, scope.path or "")


class Rule(NamedTuple):
    """One `p` line: subject may (or may not) do action on a resource type within a scope.

    Tuples, not dataclasses: a large policy creates a hundred thousand of these per load."""

    subject: str
    domain: str
    obj: str
    act: str
    scope: Scope
    effect: Effect
    source: Source

    def row(self) -> list[str]:
        return [self.subject, self.domain, self.obj, self.act, str(self.scope), self.effect]


class Link(NamedTuple):
    """One `g` edge: member holds role in domain (`*` = every configured domain).

    `anchor` is the department `dept`/`dept_tree` scopes are relative to for this assignment;
    None means the member's own department. `origin` says where the edge came from.
    """

    member: str
    role: str
    domain: str
    source: Source
    anchor: str | None = None
    origin: str = "policy line"


@dataclass(frozen=True, slots=True)
class AssignmentRule:
    """A rule deriving role links from the directory.

    kind: `everyone` (every enabled user), `group` (members of `match`), `department` (users
    in department `match`, and below it when `subtree`), `manager` (each department's manager,
    scoped to the department they manage).
    """

    kind: AssignmentKind
    role: str
    domain: str
    source: Source
    match: str = ""
    subtree: bool = True

    def describe(self) -> str:
        if self.kind == "everyone":
            return "every user"
        if self.kind == "group":
            return f"group {self.match}"
        if self.kind == "department":
            return f"department {self.match}{' and below' if self.subtree else ''}"
        return "department managers"


@dataclass(frozen=True)
class Catalog:
    """Declared roles and, per domain, resource types with their actions: the names policy
    lines may use, so a typo is an error instead of a rule that silently never matches."""

    roles: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One policy test: a request and the decision expected, or a user and expected scope."""

    name: str
    user: str
    domain: str
    source: Source
    obj: str = ""
    act: str = ""
    owner: str = ""
    dept: str = ""
    expect: Effect | None = None
    expect_scope: Mapping[str, object] | None = None
    expect_roles: tuple[str, ...] | None = None
    # The record's earlier actors by step, for dynamic segregation of duties (sod.yaml).
    actors: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    username: str
    sub: str = ""
    department: str | None = None
    disabled: bool = False
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirectorySnapshot:
    """What role derivation needs from the directory, read once per version."""

    users: Mapping[str, DirectoryUser] = field(default_factory=dict)
    # department path -> manager username (or None)
    departments: Mapping[str, str | None] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    version: str = "0"
    # Canonical usernames more than one directory user folds to: none of them is decided on.
    ambiguous: frozenset[str] = frozenset()
    # True once every name in it is canonical (`core/authz/canonical.py`).
    canonical: bool = field(default=False, compare=False)

    def by_sub(self) -> dict[str, str]:
        return {u.sub: u.username for u in self.users.values() if u.sub}


@dataclass(frozen=True)
class PolicySet:
    """Everything read from a policy directory, in file order."""

    root: str
    # A `RuleTable` when read from files (core/authz/rule_table.py); any sequence otherwise.
    rules: Sequence[Rule]
    links: tuple[Link, ...]
    assignments: tuple[AssignmentRule, ...]
    catalog: Catalog
    cases: tuple[PolicyCase, ...] = ()
    fixture: DirectorySnapshot | None = None
    file_hashes: Mapping[str, str] = field(default_factory=dict)
    model_source: Source = field(default_factory=lambda: Source("model.conf", 1))
    # True once every name and path in it is canonical (`core/authz/canonical.py`).
    canonical: bool = field(default=False, compare=False)
    # Roles whose holders must use a second factor (mfa.yaml, core/authz/mfa_roles.py).
    mfa_roles: tuple[MfaRoleRule, ...] = ()
    # Segregation-of-duties rules (sod.yaml, core/authz/sod_rules.py); None without the file.
    sod: SodPolicy | None = None

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.file_hashes):
            digest.update(f"{name}\0{self.file_hashes[name]}\n".encode())
        return digest.hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Issue:
    level: Literal["error", "warning"]
    message: str
    source: Source | None = None
    # The whole file could not be read (not YAML, not UTF-8, unreadable): every check across
    # files would then report what the missing content leaves undeclared, not a problem of
    # its own, so those checks wait until the file reads (`checks.check_loaded`).
    unreadable: bool = False

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.level}: {self.message}"


def user_subject(username: str) -> str:
    return USER_PREFIX + username


def username_of(subject: str) -> str | None:
    return subject[len(USER_PREFIX) :] if subject.startswith(USER_PREFIX) else None

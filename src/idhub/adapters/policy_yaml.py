"""The YAML files of a policy directory: catalog.yaml, assignments.yaml, tests/directory.yaml
and tests/*.yaml, read with the line of every mapping so each problem names `file:line`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from idhub.core.authz.model import (
    ANY,
    NAME_RE,
    AssignmentKind,
    AssignmentRule,
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    Issue,
    PolicyCase,
    Source,
)
from idhub.core.identifiers import canonical_name, canonical_path
from idhub.errors import InvalidInput

LINE = "__line__"


# libyaml's parser when present (10x faster on a large catalogue), the pure one otherwise.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[misc]
    """A safe loader that remembers the line of every mapping (under `__line__`)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    mapping[LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _construct_timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    # A date-shaped value that is no date (2027-13-01) stays text, for the reader of that
    # field to report with its file:line; PyYAML would raise a bare ValueError.
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


class PolicyReader:
    """Reads files of one policy directory, hashing each and collecting issues."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[Issue] = []
        self.hashes: dict[str, str] = {}

    def error(self, message: str, file: str, line: int | None = None) -> None:
        self.issues.append(Issue("error", message, Source(file, line or 1)))

    def unreadable(self, message: str, file: str, line: int | None = None) -> None:
        """The file's content is lost to the policy, not one of its entries."""
        self.issues.append(Issue("error", message, Source(file, line or 1), unreadable=True))

    def read(self, path: Path) -> str | None:
        rel = path.relative_to(self.root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.unreadable(f"cannot read: {exc.strerror}", rel)
            return None
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        try:
            # Editors on Windows like to start files with a byte-order mark.
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            self.unreadable("not UTF-8 text", rel, line)
            return None

    def yaml(self, path: Path) -> Any:
        rel = path.relative_to(self.root).as_posix()
        text = self.read(path)
        if text is None:
            return None
        try:
            return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            self.unreadable(f"not valid YAML: {exc.problem or exc}", rel, line)
        except yaml.YAMLError as exc:
            self.unreadable(f"not valid YAML: {exc}", rel)
        return None


def _line(item: Any) -> int:
    return int(item.get(LINE, 1)) if isinstance(item, dict) else 1


def _name(reader: PolicyReader, value: Any, what: str, rel: str, line: int) -> str | None:
    """The canonical spelling of a valid name, else None (reported)."""
    if isinstance(value, str):
        name = canonical_name(value)
        if name == ANY or NAME_RE.match(name):
            return name
    reader.error(f"{what} {value!r} is not a valid name", rel, line)
    return None


def _path(reader: PolicyReader, value: str, what: str, rel: str, line: int) -> str | None:
    """The canonical form of a department path, else None (reported as file:line)."""
    try:
        return canonical_path(value)
    except InvalidInput as exc:
        reader.error(f"{what}: {exc.message}", rel, line)
        return None


def read_catalog(reader: PolicyReader) -> Catalog:
    path = reader.root / "catalog.yaml"
    if not path.exists():
        reader.error(
            "catalog.yaml is missing (it declares roles and resource types)", "catalog.yaml"
        )
        return Catalog()
    doc = reader.yaml(path)
    if doc is None:
        return Catalog()
    if not isinstance(doc, dict):
        reader.error("expected a mapping with `roles` and `resources`", "catalog.yaml")
        return Catalog()
    roles: dict[str, str] = {}
    sources: dict[str, Source] = {}
    raw_roles = doc.get("roles") or {}
    if not isinstance(raw_roles, dict):
        reader.error("`roles` must map role names to descriptions", "catalog.yaml", _line(doc))
        raw_roles = {}
    for name, description in raw_roles.items():
        if name == LINE:
            continue
        role = _name(reader, name, "role", "catalog.yaml", _line(raw_roles))
        if role and role != ANY:
            roles[role] = "" if description is None else str(description)
            sources[f"role:{role}"] = Source("catalog.yaml", _line(raw_roles))
    resources: dict[str, dict[str, frozenset[str]]] = {}
    raw_resources = doc.get("resources") or {}
    if not isinstance(raw_resources, dict):
        reader.error("`resources` must map domains to resource types", "catalog.yaml", _line(doc))
        raw_resources = {}
    for domain, types in raw_resources.items():
        if domain == LINE:
            continue
        line = _line(types)
        if not isinstance(types, dict):
            reader.error(
                f"resources of {domain!r} must map types to action lists",
                "catalog.yaml",
                _line(raw_resources),
            )
            continue
        per: dict[str, frozenset[str]] = {}
        for obj, actions in types.items():
            if obj == LINE:
                continue
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                reader.error(
                    f"actions of {domain}/{obj} must be a list of names", "catalog.yaml", line
                )
                continue
            type_name = _name(reader, obj, "resource type", "catalog.yaml", line)
            if type_name:
                per[type_name] = frozenset(canonical_name(a) for a in actions)
        resources[canonical_name(str(domain))] = per
    return Catalog(roles=roles, resources=resources, sources=sources)


_ASSIGNMENT_KINDS: dict[str, tuple[AssignmentKind, str | None]] = {
    "everyone": ("everyone", None),
    "groups": ("group", "group"),
    "departments": ("department", "department"),
    "managers": ("manager", None),
}


def read_assignments(reader: PolicyReader) -> list[AssignmentRule]:
    path = reader.root / "assignments.yaml"
    if not path.exists():
        return []
    doc = reader.yaml(path)
    out: list[AssignmentRule] = []
    if doc is None:
        return out
    if not isinstance(doc, dict):
        reader.error(
            "expected a mapping of everyone/groups/departments/managers", "assignments.yaml"
        )
        return out
    for key, items in doc.items():
        if key == LINE:
            continue
        if key not in _ASSIGNMENT_KINDS:
            reader.error(
                f"unknown section {key!r} (use everyone, groups, departments, managers)",
                "assignments.yaml",
                _line(doc),
            )
            continue
        kind, match_key = _ASSIGNMENT_KINDS[key]
        if not isinstance(items, list):
            reader.error(f"`{key}` must be a list", "assignments.yaml", _line(doc))
            continue
        for item in items:
            line = _line(item)
            if not isinstance(item, dict):
                reader.error(f"each entry of `{key}` is a mapping", "assignments.yaml", line)
                continue
            role = _name(reader, item.get("role"), "role", "assignments.yaml", line)
            domain = _name(reader, item.get("domain"), "domain", "assignments.yaml", line)
            match = ""
            if match_key is not None:
                value = item.get(match_key)
                if not isinstance(value, str) or not value.strip():
                    reader.error(f"`{match_key}` is required", "assignments.yaml", line)
                    continue
                match = canonical_name(value)
                if kind == "department":
                    if not value.strip().startswith("/"):
                        reader.error(
                            f"department {value.strip()!r} must be a path like /总部/财务部",
                            "assignments.yaml",
                            line,
                        )
                        continue
                    dept_path = _path(reader, value, "department", "assignments.yaml", line)
                    if dept_path is None:
                        continue
                    match = dept_path
            known = {"role", "domain", "subtree", LINE} | ({match_key} if match_key else set())
            for extra in sorted(set(item) - known):
                reader.error(f"unknown key {extra!r}", "assignments.yaml", line)
            subtree = item.get("subtree", True)
            if not isinstance(subtree, bool):
                reader.error("`subtree` must be true or false", "assignments.yaml", line)
                continue
            if role is None or domain is None or role == ANY:
                continue
            out.append(
                AssignmentRule(kind, role, domain, Source("assignments.yaml", line), match, subtree)
            )
    return out


def read_fixture(reader: PolicyReader) -> DirectorySnapshot | None:
    path = reader.root / "tests" / "directory.yaml"
    if not path.exists():
        return None
    rel = "tests/directory.yaml"
    doc = reader.yaml(path)
    if not isinstance(doc, dict):
        if doc is not None:
            reader.error("expected departments, users and groups", rel)
        return None
    departments: dict[str, str | None] = {}
    for item in doc.get("departments") or []:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            reader.error("each department needs a `path`", rel, _line(item))
            continue
        dept_path = _path(reader, item["path"], "department", rel, _line(item))
        if dept_path is None:
            continue
        manager = item.get("manager")
        departments[dept_path] = canonical_name(manager) if isinstance(manager, str) else None
    groups: dict[str, list[str]] = {}
    raw_groups = doc.get("groups") or {}
    if isinstance(raw_groups, dict):
        for name, members in raw_groups.items():
            if name != LINE:
                groups[canonical_name(str(name))] = [
                    canonical_name(str(m)) for m in (members or [])
                ]
    users: dict[str, DirectoryUser] = {}
    for item in doc.get("users") or []:
        if not isinstance(item, dict) or not isinstance(item.get("username"), str):
            reader.error("each user needs a `username`", rel, _line(item))
            continue
        name = canonical_name(item["username"])
        dept = item.get("department")
        if isinstance(dept, str):
            dept = _path(reader, dept, f"user {name}: department", rel, _line(item))
        if dept is not None and dept not in departments:
            reader.error(f"user {name}: department {dept!r} is not listed", rel, _line(item))
        users[name] = DirectoryUser(
            username=name,
            sub=f"fixture-{name}",
            department=dept,
            disabled=bool(item.get("disabled", False)),
            groups=tuple(sorted(g for g, members in groups.items() if name in members)),
        )
    return DirectorySnapshot(
        users=users, departments=departments, groups=frozenset(groups), version="fixture"
    )


def read_cases(reader: PolicyReader, path: Path) -> list[PolicyCase]:
    rel = path.relative_to(reader.root).as_posix()
    doc = reader.yaml(path)
    if doc is None:
        return []
    items = doc.get("cases") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        reader.error("expected a list of cases (or a mapping with `cases:`)", rel)
        return []
    out: list[PolicyCase] = []
    for index, item in enumerate(items, start=1):
        line = _line(item)
        if not isinstance(item, dict):
            reader.error("each case is a mapping", rel, line)
            continue
        missing = [k for k in ("user", "domain") if not isinstance(item.get(k), str)]
        expect = item.get("expect")
        scope = item.get("expect_scope")
        roles = item.get("expect_roles")
        if expect is None and scope is None and roles is None:
            missing.append("expect, expect_scope or expect_roles")
        if expect is not None:
            missing += [k for k in ("type", "action") if not isinstance(item.get(k), str)]
            if expect not in ("allow", "deny"):
                reader.error(f"expect must be allow or deny, not {expect!r}", rel, line)
                continue
        if scope is not None:
            missing += [k for k in ("type", "action") if not isinstance(item.get(k), str)]
            if not isinstance(scope, dict):
                reader.error("expect_scope must be a mapping", rel, line)
                continue
        if roles is not None and not isinstance(roles, list):
            reader.error("expect_roles must be a list", rel, line)
            continue
        actors = item.get("actors")
        if actors is not None and not isinstance(actors, dict):
            reader.error("actors must map steps (approved_by, ...) to usernames", rel, line)
            continue
        if missing:
            reader.error(f"case is missing {', '.join(dict.fromkeys(missing))}", rel, line)
            continue
        dept = str(item.get("dept", "") or "")
        if dept and _path(reader, dept, "dept", rel, line) is None:
            continue
        clean_scope = None
        if isinstance(scope, dict):
            clean_scope = {k: v for k, v in scope.items() if k != LINE}
        out.append(
            PolicyCase(
                name=str(item.get("name") or f"case {index}"),
                user=item["user"],
                domain=item["domain"],
                source=Source(rel, line),
                obj=str(item.get("type", "")),
                act=str(item.get("action", "")),
                owner=str(item.get("owner", "") or ""),
                dept=dept,
                expect=expect,
                expect_scope=clean_scope,
                expect_roles=tuple(str(r) for r in roles) if isinstance(roles, list) else None,
                actors={k: v for k, v in actors.items() if k != LINE} if actors else None,
            )
        )
    return out

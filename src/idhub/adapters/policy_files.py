"""Reads a policy directory into a `PolicySet`, reporting every problem as `file:line`.

Layout (all names relative to the policy directory):

    model.conf          the Casbin model (must be idhub's model; see docs/policies.md)
    *.csv               policy lines: `p, role, domain, type, action, scope, effect`
                        and role links: `g, member, role, domain`
    catalog.yaml        the roles and, per domain, resource types and their actions
    assignments.yaml    rules deriving roles from the directory (groups, departments, managers)
    tests/directory.yaml  the small directory the policy tests run against
    tests/*.yaml        policy tests

Also: exporting a git revision of the directory (for `idhub policy diff REV`) and watching it.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from idhub.core.policy_model import (
    ANY,
    CANONICAL_MODEL,
    NAME_RE,
    USER_PREFIX,
    AssignmentKind,
    AssignmentRule,
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    Issue,
    Link,
    PolicyCase,
    PolicySet,
    Rule,
    Scope,
    Source,
    parse_scope,
)
from idhub.errors import PolicyError

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


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[Issue] = []
        self.hashes: dict[str, str] = {}

    def error(self, message: str, file: str, line: int | None = None) -> None:
        self.issues.append(Issue("error", message, Source(file, line or 1)))

    def read(self, path: Path) -> str | None:
        rel = path.relative_to(self.root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.error(f"cannot read: {exc.strerror}", rel)
            return None
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            self.error("not UTF-8 text", rel, line)
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
            self.error(f"not valid YAML: {exc.problem or exc}", rel, mark.line + 1 if mark else 1)
        except yaml.YAMLError as exc:
            self.error(f"not valid YAML: {exc}", rel)
        return None


# ---------------------------------------------------------------------- model.conf


def _normalise(value: str) -> str:
    return re.sub(r"\s+", "", value)


def _read_model(reader: _Reader) -> Source:
    path = reader.root / "model.conf"
    if not path.exists():
        reader.error("the model file is missing (copy it from docs/policies.md)", "model.conf")
        return Source("model.conf", 1)
    text = reader.read(path)
    if text is None:
        return Source("model.conf", 1)
    found: dict[str, dict[str, tuple[str, int]]] = {}
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in CANONICAL_MODEL:
                reader.error(f"unknown model section [{section}]", "model.conf", number)
            found.setdefault(section, {})
            continue
        if "=" not in line:
            reader.error("expected `key = value`", "model.conf", number)
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        found.setdefault(section, {})[key] = (value, number)
    for section, entries in CANONICAL_MODEL.items():
        for key, expected in entries.items():
            got = found.get(section, {}).get(key)
            if got is None:
                reader.error(
                    f"[{section}] {key} is missing; idhub expects: {key} = {expected}", "model.conf"
                )
            elif _normalise(got[0]) != _normalise(expected):
                reader.error(
                    f"[{section}] {key} differs from the model idhub indexes; "
                    f"expected: {key} = {expected}",
                    "model.conf",
                    got[1],
                )
        for key, (_value, number) in found.get(section, {}).items():
            if key not in entries:
                reader.error(
                    f"[{section}] {key} is not part of idhub's model", "model.conf", number
                )
    return Source("model.conf", 1)


# ---------------------------------------------------------------------- CSV lines


def _subject_ok(value: str) -> bool:
    if value.startswith(USER_PREFIX):
        return len(value) > len(USER_PREFIX) and "," not in value
    return bool(NAME_RE.match(value))


def _read_csv(reader: _Reader, path: Path, rules: list[Rule], links: list[Link]) -> None:
    rel = path.relative_to(reader.root).as_posix()
    text = reader.read(path)
    if text is None:
        return
    # Policies repeat the same names and scopes thousands of times: validate each once.
    good_names: set[str] = {ANY}
    good_subjects: set[str] = set()
    scopes: dict[str, Scope] = {}

    def name_ok(value: str) -> bool:
        if value in good_names:
            return True
        if NAME_RE.match(value):
            good_names.add(value)
            return True
        return False

    def subject_ok(value: str) -> bool:
        if value in good_subjects:
            return True
        if _subject_ok(value):
            good_subjects.add(value)
            return True
        return False

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        source = Source(rel, number)
        kind = fields[0]
        if kind == "p":
            if len(fields) != 7:
                reader.error(
                    f"a p line has 6 fields (subject, domain, type, action, scope, effect); "
                    f"found {len(fields) - 1}",
                    rel,
                    number,
                )
                continue
            subject, domain, obj, act, scope_text, effect = fields[1:]
            problems = []
            if not subject_ok(subject):
                problems.append(f"subject {subject!r} is not a role name or user:<username>")
            if not name_ok(domain):
                problems.append(f"domain {domain!r} is not a valid name")
            if not name_ok(obj):
                problems.append(f"resource type {obj!r} is not a valid name")
            if not name_ok(act):
                problems.append(f"action {act!r} is not a valid name")
            if effect not in ("allow", "deny"):
                problems.append(f"effect must be allow or deny, not {effect!r}")
            scope = scopes.get(scope_text)
            if scope is None:
                try:
                    scope = scopes[scope_text] = parse_scope(scope_text)
                except ValueError as exc:
                    problems.append(str(exc))
            if problems:
                for problem in problems:
                    reader.error(problem, rel, number)
                continue
            assert scope is not None
            rules.append(Rule(subject, domain, obj, act, scope, effect, source))  # type: ignore[arg-type]
        elif kind == "g":
            if len(fields) != 4:
                reader.error(
                    f"a g line has 3 fields (member, role, domain); found {len(fields) - 1}",
                    rel,
                    number,
                )
                continue
            member, role, domain = fields[1:]
            if not _subject_ok(member):
                reader.error(
                    f"member {member!r} is not a role name or user:<username>", rel, number
                )
            elif not NAME_RE.match(role):
                reader.error(f"{role!r} is not a role name (users cannot be roles)", rel, number)
            elif domain != ANY and not NAME_RE.match(domain):
                reader.error(f"domain {domain!r} is not a valid name", rel, number)
            else:
                links.append(Link(member, role, domain, source))
        else:
            reader.error(f"a line starts with p or g, not {kind!r}", rel, number)


# ---------------------------------------------------------------------- YAML files


def _line(item: Any) -> int:
    return int(item.get(LINE, 1)) if isinstance(item, dict) else 1


def _name(reader: _Reader, value: Any, what: str, rel: str, line: int) -> str | None:
    if isinstance(value, str) and (value == ANY or NAME_RE.match(value)):
        return value
    reader.error(f"{what} {value!r} is not a valid name", rel, line)
    return None


def _read_catalog(reader: _Reader) -> Catalog:
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
        if _name(reader, name, "role", "catalog.yaml", _line(raw_roles)) and name != ANY:
            roles[name] = "" if description is None else str(description)
            sources[f"role:{name}"] = Source("catalog.yaml", _line(raw_roles))
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
            if _name(reader, obj, "resource type", "catalog.yaml", line):
                per[obj] = frozenset(actions)
        resources[str(domain)] = per
    return Catalog(roles=roles, resources=resources, sources=sources)


_ASSIGNMENT_KINDS: dict[str, tuple[AssignmentKind, str | None]] = {
    "everyone": ("everyone", None),
    "groups": ("group", "group"),
    "departments": ("department", "department"),
    "managers": ("manager", None),
}


def _read_assignments(reader: _Reader) -> list[AssignmentRule]:
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
                match = value.strip()
                if kind == "department" and not match.startswith("/"):
                    reader.error(
                        f"department {match!r} must be a path like /总部/财务部",
                        "assignments.yaml",
                        line,
                    )
                    continue
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


def _read_fixture(reader: _Reader) -> DirectorySnapshot | None:
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
        manager = item.get("manager")
        departments[item["path"]] = manager if isinstance(manager, str) else None
    groups: dict[str, list[str]] = {}
    raw_groups = doc.get("groups") or {}
    if isinstance(raw_groups, dict):
        for name, members in raw_groups.items():
            if name != LINE:
                groups[str(name)] = [str(m) for m in (members or [])]
    users: dict[str, DirectoryUser] = {}
    for item in doc.get("users") or []:
        if not isinstance(item, dict) or not isinstance(item.get("username"), str):
            reader.error("each user needs a `username`", rel, _line(item))
            continue
        name = item["username"]
        dept = item.get("department")
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


def _read_cases(reader: _Reader, path: Path) -> list[PolicyCase]:
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
        if missing:
            reader.error(f"case is missing {', '.join(dict.fromkeys(missing))}", rel, line)
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
                dept=str(item.get("dept", "") or ""),
                expect=expect,
                expect_scope=clean_scope,
                expect_roles=tuple(str(r) for r in roles) if isinstance(roles, list) else None,
            )
        )
    return out


# ---------------------------------------------------------------------- entry points


def load_policy_dir(root: Path) -> tuple[PolicySet, list[Issue]]:
    """Reads everything; returns what could be read and every problem found on the way."""
    reader = _Reader(root)
    if not root.is_dir():
        raise PolicyError("the policy directory does not exist", file=str(root))
    model_source = _read_model(reader)
    rules: list[Rule] = []
    links: list[Link] = []
    csv_files = sorted(root.glob("*.csv"))
    if not csv_files:
        reader.error("no policy lines: add at least one *.csv file", root.name)
    for path in csv_files:
        _read_csv(reader, path, rules, links)
    catalog = _read_catalog(reader)
    assignments = _read_assignments(reader)
    fixture = _read_fixture(reader)
    cases: list[PolicyCase] = []
    tests_dir = root / "tests"
    if tests_dir.is_dir():
        for path in sorted(tests_dir.glob("*.yaml")) + sorted(tests_dir.glob("*.yml")):
            if path.name != "directory.yaml":
                cases.extend(_read_cases(reader, path))
    policy = PolicySet(
        root=str(root),
        rules=tuple(rules),
        links=tuple(links),
        assignments=tuple(assignments),
        catalog=catalog,
        cases=tuple(cases),
        fixture=fixture,
        file_hashes=dict(reader.hashes),
        model_source=model_source,
    )
    return policy, reader.issues


def export_revision(policy_dir: Path, revision: str, into: Path) -> Path:
    """Writes the policy directory as it was at git `revision` under `into`; returns its path."""
    if revision.startswith("-"):
        raise PolicyError(f"{revision!r} is not a git revision")
    try:
        # Run from inside the directory, git archives just that subtree, paths relative to it.
        archive = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(policy_dir), "archive", "--format=tar", revision, "--", "."],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
    except FileNotFoundError as exc:
        raise PolicyError("git is not installed; pass a directory instead") from exc
    except subprocess.CalledProcessError as exc:
        message = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else exc.stderr
        raise PolicyError(
            f"cannot read {revision!r} from git: {(message or '').strip() or exc}"
        ) from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def temporary_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="idhub-policy-")


def watch_policy_dir(
    root: Path, on_change: Callable[[set[str]], None], stop: threading.Event
) -> None:
    """Calls `on_change(changed paths)` after each settled burst of edits until `stop` is set.

    Uses watchfiles (inotify) and falls back to polling modification times."""
    try:
        from watchfiles import watch
    except ImportError:  # pragma: no cover - watchfiles ships with uvicorn[standard]
        _poll_dir(root, on_change, stop)
        return
    for changes in watch(
        root, stop_event=stop, debounce=300, rust_timeout=200, raise_interrupt=False
    ):
        on_change({path for _kind, path in changes})


def _poll_dir(root: Path, on_change: Callable[[set[str]], None], stop: threading.Event) -> None:
    def stamp() -> dict[str, float]:
        return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}

    before = stamp()
    while not stop.wait(1.0):
        now = stamp()
        if now != before:
            changed = {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}
            before = now
            on_change(changed)

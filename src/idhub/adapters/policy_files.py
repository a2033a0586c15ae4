"""Reads a policy directory into a `PolicySet`, reporting every problem as `file:line`.

Layout (all names relative to the policy directory):

    model.conf          the Casbin model (must be idhub's model; see docs/policies.md)
    *.csv               policy lines: `p, role, domain, type, action, scope, effect`
                        and role links: `g, member, role, domain`
    catalog.yaml        the roles and, per domain, resource types and their actions
    mfa.yaml            roles whose holders must use a second factor (optional)
    sod.yaml            segregation of duties: conflicting duties, exceptions (optional)
    assignments.yaml    rules deriving roles from the directory (groups, departments, managers)
    tests/directory.yaml  the small directory the policy tests run against
    tests/*.yaml        policy tests

Also: exporting a git revision of the directory (for `idhub policy diff REV`) and watching it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from idhub.adapters.mfa_policy_yaml import read_mfa_roles
from idhub.adapters.policy_yaml import (
    PolicyReader,
    read_assignments,
    read_cases,
    read_catalog,
    read_fixture,
)
from idhub.adapters.sod_policy_yaml import read_sod
from idhub.core.authz.canonical import canonical_policy
from idhub.core.authz.model import (
    ANY,
    CANONICAL_MODEL,
    NAME_RE,
    USER_PREFIX,
    Issue,
    Link,
    PolicyCase,
    PolicySet,
    Scope,
    Source,
    parse_scope,
)
from idhub.core.authz.rule_table import RuleTableBuilder
from idhub.core.identifiers import canonical_name, canonical_subject
from idhub.errors import InvalidInput, PolicyError

# ---------------------------------------------------------------------- model.conf


def _normalise(value: str) -> str:
    return re.sub(r"\s+", "", value)


def _read_model(reader: PolicyReader) -> Source:
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


def _remember(
    fields: list[str],
    rules: RuleTableBuilder,
    subjects: dict[str, int],
    names: dict[str, int],
    scopes: dict[str, int],
    effects: dict[str, bool],
) -> None:
    """After `rules` accepted the `p` line `fields` (so every field is valid): each field
    text as written, with the number the builder gave its canonical value."""
    table = rules.last_line()
    subjects[fields[1]] = table[0]
    names[fields[2]], names[fields[3]], names[fields[4]] = table[1], table[2], table[3]
    scopes[fields[5]] = table[4]
    effects[fields[6]] = table[5] == 1


def _read_csv(reader: PolicyReader, path: Path, rules: RuleTableBuilder, links: list[Link]) -> None:
    rel = path.relative_to(reader.root).as_posix()
    text = reader.read(path)
    if text is None:
        return
    # Policies repeat the same names and scopes thousands of times: each field as written is
    # canonicalised and validated once, and every line shares the one canonical string.
    names: dict[str, str] = {}
    subjects: dict[str, str] = {}
    good_names: set[str] = {ANY}
    good_subjects: set[str] = set()
    scopes: dict[str, Scope] = {}

    def name(value: str) -> str:
        found = names.get(value)
        if found is None:
            found = names[value] = canonical_name(value)
        return found

    def subject_of(value: str) -> str:
        found = subjects.get(value)
        if found is None:
            found = subjects[value] = canonical_subject(value)
        return found

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

    # Each field text as written (spaces and case included) once its line was accepted: its
    # number in the builder's tables, so the next line repeating it is a few dict lookups and
    # one append, not a canonicalisation, a validity check and a table lookup per field.
    known_subjects: dict[str, int] = {}
    known_names: dict[str, int] = {}
    known_scopes: dict[str, int] = {}
    known_effects: dict[str, bool] = {}
    file_number = rules.file_number(rel)
    add_numbers = rules.add_numbers
    add_rule = rules.add
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        kind = fields[0].strip()
        # Names are matched in their canonical spelling (core/identifiers.py); scopes and
        # effects are parsed from the text as written.
        if kind == "p" and len(fields) == 7:
            sub_id = known_subjects.get(fields[1])
            dom_id, obj_id = known_names.get(fields[2]), known_names.get(fields[3])
            act_id, scope_id = known_names.get(fields[4]), known_scopes.get(fields[5])
            deny = known_effects.get(fields[6])
            if (
                sub_id is not None
                and dom_id is not None
                and obj_id is not None
                and act_id is not None
                and scope_id is not None
                and deny is not None
            ):
                add_numbers(sub_id, dom_id, obj_id, act_id, scope_id, deny, file_number, number)
                continue
        if kind == "p":
            if len(fields) != 7:
                reader.error(
                    f"a p line has 6 fields (subject, domain, type, action, scope, effect); "
                    f"found {len(fields) - 1}",
                    rel,
                    number,
                )
                continue
            subject = subject_of(fields[1].strip())
            domain, obj, act = name(fields[2]), name(fields[3]), name(fields[4])
            scope_text, effect = fields[5].strip(), name(fields[6])
            scope = scopes.get(scope_text)
            if (
                scope is not None
                and subject in good_subjects
                and domain in good_names
                and obj in good_names
                and act in good_names
                and effect in ("allow", "deny")
            ):
                add_rule(subject, domain, obj, act, scope, effect == "deny", rel, number)
                _remember(fields, rules, known_subjects, known_names, known_scopes, known_effects)
                continue
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
            add_rule(subject, domain, obj, act, scope, effect == "deny", rel, number)
            _remember(fields, rules, known_subjects, known_names, known_scopes, known_effects)
        elif kind == "g":
            if len(fields) != 4:
                reader.error(
                    f"a g line has 3 fields (member, role, domain); found {len(fields) - 1}",
                    rel,
                    number,
                )
                continue
            member = subject_of(fields[1].strip())
            role, domain = name(fields[2]), name(fields[3])
            source = Source(rel, number)
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


# ---------------------------------------------------------------------- entry points


def load_policy_dir(root: Path) -> tuple[PolicySet, list[Issue]]:
    """Reads everything; returns what could be read and every problem found on the way."""
    reader = PolicyReader(root)
    if not root.is_dir():
        raise PolicyError("the policy directory does not exist", file=str(root))
    model_source = _read_model(reader)
    rules = RuleTableBuilder()
    links: list[Link] = []
    csv_files = sorted(root.glob("*.csv"))
    if not csv_files:
        reader.error("no policy lines: add at least one *.csv file", root.name)
    for path in csv_files:
        _read_csv(reader, path, rules, links)
    catalog = read_catalog(reader)
    assignments = read_assignments(reader)
    fixture = read_fixture(reader)
    mfa_roles = read_mfa_roles(reader)
    sod = read_sod(reader)
    cases: list[PolicyCase] = []
    tests_dir = root / "tests"
    if tests_dir.is_dir():
        for path in sorted(tests_dir.glob("*.yaml")) + sorted(tests_dir.glob("*.yml")):
            if path.name != "directory.yaml":
                cases.extend(read_cases(reader, path))
    policy = PolicySet(
        root=str(root),
        # Names canonical already: the loader canonicalises every field as it reads it.
        rules=rules.build(canonical=True),
        links=tuple(links),
        assignments=tuple(assignments),
        catalog=catalog,
        cases=tuple(cases),
        fixture=fixture,
        file_hashes=dict(reader.hashes),
        model_source=model_source,
        mfa_roles=mfa_roles,
        sod=sod,
    )
    try:
        policy = canonical_policy(policy)
    except InvalidInput as exc:  # the readers report bad paths with file:line first
        reader.error(exc.message, root.name)
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


def keep_last_good(policy: PolicySet, into: Path) -> None:
    """Copies the files of a policy that passed into `into`, replacing the previous copy.

    Only bytes whose hash matches what was checked are kept (a file edited again since the
    load is not), and the copy is swapped in whole, so `into` always holds one good policy."""
    root = Path(policy.root)
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = into.with_name(f"{into.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name, digest in policy.file_hashes.items():
            data = (root / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise PolicyError("changed since it was checked; not kept", file=name)
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        previous = into.with_name(f"{into.name}.old-{os.getpid()}")
        if into.exists():
            into.rename(previous)
        staging.rename(into)
        shutil.rmtree(previous, ignore_errors=True)
    except OSError as exc:
        raise PolicyError(f"cannot keep a copy of the policy: {exc}", file=str(into)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def temporary_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="idhub-policy-")


class PolicyFiles:
    """What the admin's policy tools read: a policy directory, or a git revision of one."""

    def load(self, root: Path) -> tuple[PolicySet, list[Issue]]:
        return load_policy_dir(root)

    @contextlib.contextmanager
    def revision(self, policy_dir: Path, revision: str) -> Iterator[Path]:
        """The directory as it was at git `revision`, in a temporary copy removed on exit."""
        with temporary_dir() as tmp:
            yield export_revision(policy_dir, revision, Path(tmp))

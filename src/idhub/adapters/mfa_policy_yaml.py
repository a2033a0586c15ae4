"""`mfa.yaml` of a policy directory: the roles whose holders must use a second factor
(core/authz/mfa_roles.py), read like the other policy files so each problem names `file:line`.

    require:
      - {role: "finance*", domains: [reimburse, archive]}
      - {role: admin, domain: "*"}
"""

from __future__ import annotations

import re
from typing import Any

from idhub.adapters.policy_yaml import LINE, PolicyReader
from idhub.core.authz.mfa_roles import ANY, MfaRoleRule
from idhub.core.authz.model import NAME_RE

FILE = "mfa.yaml"
# A role name, or a pattern of one with `*` standing for any run of characters.
_ROLE_PATTERN = re.compile(r"^[A-Za-z*][A-Za-z0-9_.*-]{0,63}$")


def _line(item: Any) -> int:
    return int(item.get(LINE, 1)) if isinstance(item, dict) else 1


def _domains(reader: PolicyReader, item: dict[str, Any], line: int) -> tuple[str, ...] | None:
    raw = item.get("domains", item.get("domain"))
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(v, str) and (v == ANY or NAME_RE.match(v)) for v in values):
        reader.error('`domain` / `domains` must name policy domains (or "*")', FILE, line)
        return None
    return tuple(values)


def read_mfa_roles(reader: PolicyReader) -> tuple[MfaRoleRule, ...]:
    path = reader.root / FILE
    if not path.exists():
        return ()
    doc = reader.yaml(path)
    if doc is None:
        return ()
    items = doc.get("require") if isinstance(doc, dict) else None
    unknown = sorted(k for k in doc if k not in ("require", LINE)) if isinstance(doc, dict) else []
    if not isinstance(items, list) or unknown:
        reader.error("expected a mapping with one list, `require`", FILE, _line(doc))
        return ()
    rules: list[MfaRoleRule] = []
    for item in items:
        line = _line(item)
        if not isinstance(item, dict):
            reader.error(
                "each entry of `require` is a mapping with `role` and `domains`", FILE, line
            )
            continue
        extra = sorted(k for k in item if k not in ("role", "domain", "domains", LINE))
        if extra:
            reader.error(f"unknown key {extra[0]!r} (use role, domains)", FILE, line)
            continue
        role = item.get("role")
        if not isinstance(role, str) or not _ROLE_PATTERN.match(role):
            reader.error(f"role {role!r} is not a role name or pattern", FILE, line)
            continue
        domains = _domains(reader, item, line)
        if domains is not None:
            rules.append(MfaRoleRule(role=role, domains=domains, where=f"{FILE}:{line}"))
    return tuple(rules)

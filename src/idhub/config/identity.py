"""`[identity]` and `[identity.precedence]`: how people several sources describe become one
idhub user (docs/directory.md, "One identity per person"). Every key is checked, with the file
and line of the mistake; the rules themselves are `core/directory/linking.py`'s."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from idhub.config._values import Locator
from idhub.core.directory.linking import ATTRIBUTES, LINK_KEYS, LinkRules

_KEYS = {"link_keys", "department_source", "authoritative", "country_code", "precedence"}
# "kind:name" as every source is named: ldap:corp, dingtalk:corp, scim:hr, local.
_SOURCE = re.compile(r"(local|(ldap|scim|dingtalk|wecom):[A-Za-z0-9_-]{1,50})")


def identity_rules(doc: Mapping[str, Any], *, locator: Locator) -> LinkRules:
    table = doc.get("identity", {})
    if not isinstance(table, dict):
        raise locator.error("[identity] must be a table", "identity")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise locator.error(
            f"[identity] has unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})",
            "identity",
            unknown[0],
        )
    kwargs: dict[str, Any] = {}
    if "link_keys" in table:
        keys = _strings(table["link_keys"], "link_keys", "identity", locator)
        bad = [k for k in keys if k not in LINK_KEYS]
        if bad or len(set(keys)) != len(keys):
            raise locator.error(
                f"[identity] link_keys: {bad[0]!r} is not a link key"
                if bad
                else "[identity] link_keys lists a key twice",
                "identity",
                "link_keys",
            )
        kwargs["link_keys"] = tuple(keys)
    if "department_source" in table:
        kwargs["department_source"] = _source(
            table["department_source"], "department_source", "identity", locator
        )
    if "authoritative" in table:
        names = _strings(table["authoritative"], "authoritative", "identity", locator)
        kwargs["authoritative"] = tuple(
            _source(n, "authoritative", "identity", locator) for n in names
        )
    if "country_code" in table:
        code = table["country_code"]
        if not isinstance(code, str) or not re.fullmatch(r"[1-9][0-9]{0,2}", code):
            raise locator.error(
                '[identity] country_code must be the digits of a calling code, such as "86"',
                "identity",
                "country_code",
            )
        kwargs["country_code"] = code
    precedence = table.get("precedence", {})
    if not isinstance(precedence, dict):
        raise locator.error("[identity.precedence] must be a table", "identity.precedence")
    ranked: dict[str, tuple[str, ...]] = {}
    for attribute, value in precedence.items():
        if attribute not in ATTRIBUTES:
            raise locator.error(
                f"[identity.precedence] {attribute!r} is not an attribute precedence applies "
                f"to (known: {', '.join(ATTRIBUTES)})",
                "identity.precedence",
                attribute,
            )
        names = _strings(value, attribute, "identity.precedence", locator)
        ranked[attribute] = tuple(
            _source(n, attribute, "identity.precedence", locator) for n in names
        )
    kwargs["precedence"] = ranked
    return LinkRules(**kwargs)


def _strings(value: Any, key: str, section: str, locator: Locator) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise locator.error(f"[{section}] {key} must be a list of strings", section, key)
    return list(value)


def _source(value: Any, key: str, section: str, locator: Locator) -> str:
    if not isinstance(value, str) or not _SOURCE.fullmatch(value):
        raise locator.error(
            f"[{section}] {key}: {value!r} is not a source name "
            '(such as "ldap:corp", "dingtalk:corp", "scim:hr" or "local")',
            section,
            key,
        )
    return value

"""`[directory.scim.<name>]` tables: one SCIM source each, identified by its bearer token,
of which only the SHA-256 digest is configured (`idhub scim token NAME` prints a new token
and the line to add)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from idhub.config._values import Locator
from idhub.config.settings import ScimSourceSettings

_KEYS = {"token_sha256"}


def scim_sources(
    directory: Mapping[str, Any], *, locator: Locator
) -> dict[str, ScimSourceSettings]:
    tables = directory.get("scim", {})
    if not isinstance(tables, dict):
        raise locator.error("[directory.scim] must be a table of named sources", "directory.scim")
    sources: dict[str, ScimSourceSettings] = {}
    for name, table in tables.items():
        section = f"directory.scim.{name}"
        if not isinstance(table, dict):
            raise locator.error(f"[{section}] must be a table", section)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", name):
            raise locator.error(
                f"SCIM source name {name!r} may use letters, digits, _ and - only", section
            )
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise locator.error(
                f"[{section}] has unknown key {unknown[0]!r} (known: token_sha256)",
                section,
                unknown[0],
            )
        digest = table.get("token_sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise locator.error(
                f"[{section}] token_sha256 must be 64 lower-case hex digits "
                "(run `idhub scim token NAME`)",
                section,
                "token_sha256",
            )
        sources[name] = ScimSourceSettings(name=name, token_sha256=digest)
    return sources

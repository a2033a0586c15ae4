"""Is a resource type or action one the catalog declares? Asked of what an admin types (`idhub
policy explain`, the cases in policies/tests/): a misspelt type matches no policy line, so the
answer would be a DENY that looks like a decision about the real type. Requests from systems
are not refused this way; the decision API answers them from the lines alone."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from idhub.core.authz.model import Catalog
from idhub.core.identifiers import canonical_name
from idhub.errors import InvalidInput


def _close(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def unknown_name(catalog: Catalog, domain: str, obj: str, act: str) -> str | None:
    """What the catalog does not know in (domain, type, action), with close names, or None."""
    domain, obj, act = canonical_name(domain), canonical_name(obj), canonical_name(act)
    types = catalog.resources.get(domain, {})
    if obj not in types:
        declared = ", ".join(sorted(types)) or "none"
        return (
            f"resource type {obj!r} is not in the catalog for domain {domain!r}"
            f"{_close(obj, types)} (declared: {declared})"
        )
    actions = types[obj]
    if act not in actions:
        return (
            f"action {act!r} is not declared for {obj!r} in domain {domain!r}"
            f"{_close(act, actions)} (declared: {', '.join(sorted(actions))})"
        )
    return None


def require_known(catalog: Catalog, domain: str, obj: str, act: str) -> None:
    problem = unknown_name(catalog, domain, obj, act)
    if problem is not None:
        raise InvalidInput(problem)

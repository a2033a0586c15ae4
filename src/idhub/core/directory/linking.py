"""One identity per person: how a person a source presents is matched to an existing idhub
user, which linked source's value of an attribute wins, and which source may disable them.

Pure rules over plain values; the sync engine (`core/directory/sync.py`) and the SCIM service
(`core/scim/service.py`) call them, the stores only fetch and write.

- **Matching** walks the configured keys in order (employee number, email, mobile by default)
  over canonical values (trimmed employee number, case-folded email, mobile digits with the
  country code made explicit). The first key that has candidates decides: exactly one
  candidate not yet linked to another person of the same source is a link; anything else is
  a conflict for an admin. Never guess: a later key is not consulted to break a tie.
- **Precedence**: per attribute, the linked sources are ranked (listed ones in order, then the
  creating source, then the rest by name); the attribute's value is the first ranked source's
  that provides one (a non-empty value).
- **Authority**: a source may disable the person only when authoritative for them (listed in
  `authoritative`, or, with no list, the creating source); the last link always is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

LINK_KEYS = ("employee_number", "email", "mobile")
# Attributes precedence may be configured for (idhub's column names; "employee_id" is the
# employee number). "manager" ranks who names a department's head.
ATTRIBUTES = ("display_name", "email", "phone", "employee_id", "department", "manager")
DEFAULT_COUNTRY_CODE = "86"


@dataclass(frozen=True)
class LinkRules:
    """`[identity]` and `[identity.precedence]` of idhub.toml (config/identity.py)."""

    link_keys: tuple[str, ...] = LINK_KEYS
    # attribute -> sources in order of precedence ("dingtalk:corp", "ldap:corp", ...)
    precedence: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The one source that builds the department tree and places linked people in it.
    department_source: str | None = None
    # Sources allowed to disable the people they are linked to; empty: the creating source.
    authoritative: tuple[str, ...] = ()
    # Country code assumed for a mobile number written without one.
    country_code: str = DEFAULT_COUNTRY_CODE


# ------------------------------------------------------------------ canonical values


def canonical_email(value: str | None) -> str | None:
    value = (value or "").strip()
    return value.casefold() if "@" in value else None


def canonical_mobile(value: str | None, *, country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """ "+86 138-0013-8000", "0086 13800138000" and "13800138000" are one number:
    "8613800138000". Too few digits to be a phone number: None (never matches)."""
    raw = (value or "").strip()
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) < 6:
        return None
    if raw.startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    if digits.startswith(country_code) and len(digits) > 11:
        return digits
    return country_code + digits.lstrip("0") if digits.startswith("0") else country_code + digits


def mobile_spellings(canonical: str, country_code: str = DEFAULT_COUNTRY_CODE) -> list[str]:
    """The usual ways a stored phone column writes the canonical number, for an indexed
    look-up of one person (SCIM); a sync compares every stored number canonically."""
    out = [canonical, "+" + canonical, "00" + canonical]
    if canonical.startswith(country_code):
        national = canonical[len(country_code) :]
        out += [national, f"+{country_code} {national}", f"{country_code} {national}"]
        if len(national) == 11:  # Chinese mobiles, as often grouped 3-4-4
            grouped = f"{national[:3]} {national[3:7]} {national[7:]}"
            dashed = grouped.replace(" ", "-")
            out += [grouped, dashed, f"+{country_code} {grouped}", f"+{country_code} {dashed}"]
    return out


def canonical_employee_number(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def canonical_keys(
    *,
    email: str | None,
    phone: str | None,
    employee_id: str | None,
    country_code: str = DEFAULT_COUNTRY_CODE,
) -> dict[str, str]:
    """key -> canonical value, for the keys this person has a value for."""
    found = {
        "employee_number": canonical_employee_number(employee_id),
        "email": canonical_email(email),
        "mobile": canonical_mobile(phone, country_code=country_code),
    }
    return {k: v for k, v in found.items() if v is not None}


def value_hash(value: str) -> str:
    """What a link records of the value it was made on: enough to tell later whether the
    same value still matches, without copying personal data into the link table."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ matching


@dataclass(frozen=True)
class Candidate:
    """An existing idhub user a key value points at, and the sources already linked to it."""

    user_id: int
    sources: frozenset[str]


@dataclass(frozen=True)
class Match:
    outcome: Literal["link", "conflict", "none"]
    key: str | None = None
    value: str | None = None
    user_id: int | None = None
    candidates: tuple[int, ...] = ()
    reason: str = ""


def match_person(
    keys: Mapping[str, str],
    index: Mapping[str, Mapping[str, Sequence[Candidate]]],
    *,
    source: str,
    order: Sequence[str],
) -> Match:
    """Where a person `source` presents (its canonical `keys`) belongs, by the key `order`.

    `index`: key -> canonical value -> the idhub users holding it."""
    for key in order:
        value = keys.get(key)
        if value is None:
            continue
        found = index.get(key, {}).get(value, ())
        if not found:
            continue
        ids = tuple(sorted({c.user_id for c in found}))
        if len(ids) > 1:
            return Match(
                "conflict",
                key,
                value,
                candidates=ids,
                reason=f"{len(ids)} idhub users have this {key.replace('_', ' ')}",
            )
        candidate = found[0]
        if source in candidate.sources:
            return Match(
                "conflict",
                key,
                value,
                candidates=ids,
                reason=f"the user with this {key.replace('_', ' ')} is already linked to "
                f"another person of {source}",
            )
        return Match("link", key, value, user_id=candidate.user_id, candidates=ids)
    return Match("none")


def build_index(
    people: Iterable[tuple[int, Mapping[str, str], frozenset[str]]],
) -> dict[str, dict[str, list[Candidate]]]:
    """key -> value -> candidates, from (user id, canonical keys, linked sources)."""
    index: dict[str, dict[str, list[Candidate]]] = {}
    for user_id, keys, sources in people:
        candidate = Candidate(user_id, sources)
        for key, value in keys.items():
            index.setdefault(key, {}).setdefault(value, []).append(candidate)
    return index


# ------------------------------------------------------------------ precedence


def ranking(rules: LinkRules, attribute: str, sources: Iterable[str], creator: str) -> list[str]:
    """`sources` in the order they win `attribute`: listed ones first (in the listed order),
    then the creating source, then the other unlisted ones by name (so the order is stable)."""
    listed = rules.precedence.get(attribute, ())
    pool = set(sources)
    first = [s for s in listed if s in pool]
    rest = sorted(pool - set(first), key=lambda s: (s != creator, s))
    return first + rest


def resolve(
    rules: LinkRules,
    attribute: str,
    values: Mapping[str, Any],
    creator: str,
) -> Any:
    """The value of `attribute` given what each linked source says (source -> value).

    Departments: when the department source is linked, its word is final (even "none")."""
    chosen = rules.department_source
    if attribute == "department" and chosen is not None and chosen in values:
        return values[chosen]
    order = ranking(rules, attribute, values, creator)
    for source in order:
        value = values[source]
        if value not in (None, ""):
            return value
    return values.get(order[0]) if order else None


def check_authoritative(
    rules: LinkRules, source: str, *, creator: str, linked: Iterable[str]
) -> bool:
    """May `source` disable the person (rather than only drop its link)? The last link may."""
    others = set(linked) - {source}
    if not others:
        return True
    if rules.authoritative:
        return source in rules.authoritative
    return source == creator

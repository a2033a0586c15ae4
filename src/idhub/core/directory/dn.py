"""Distinguished names (RFC 4514) as directory sync needs them: parsing with escapes,
comparison keys, and the department path an entry's OUs spell."""

from __future__ import annotations

import re
import sys


class MappingProblem(ValueError):
    """An entry that cannot become a user (no username, no stable id ...)."""


_HEX_PAIR = re.compile(r"\\([0-9A-Fa-f]{2})")


def _unescape(value: str) -> str:
    """Undoes RFC 4514 escapes, including hex pairs that spell UTF-8 bytes."""
    if "\\" not in value:
        return value.strip()
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if _HEX_PAIR.fullmatch("\\" + pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        out.extend(ch.encode("utf-8"))
        i += 1
    return out.decode("utf-8", errors="replace").strip()


def parse_dn(dn: str) -> list[tuple[str, str]]:
    """`uid=a,ou=财务部,dc=x` -> [("uid","a"), ("ou","财务部"), ("dc","x")] (first AVA per RDN)."""
    if "\\" not in dn and "+" not in dn and ";" not in dn:
        # No escapes: a plain split is exact, and far cheaper on every synced entry.
        simple: list[tuple[str, str]] = []
        for part in dn.split(","):
            attr, sep, value = part.partition("=")
            if not sep:
                raise MappingProblem(f"not a distinguished name component: {part[:80]!r}")
            simple.append((attr.strip().lower(), value.strip()))
        return simple
    rdns: list[tuple[str, str]] = []
    current: list[str] = []
    escaped = False
    for ch in dn:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch in ",;":
            rdns.append(_split_rdn("".join(current)))
            current = []
        else:
            current.append(ch)
    if current or rdns:
        rdns.append(_split_rdn("".join(current)))
    return rdns


def _split_rdn(rdn: str) -> tuple[str, str]:
    # Multi-valued RDNs ("cn=a+uid=b") keep their first value; departments never use them.
    first = re.split(r"(?<!\\)\+", rdn, maxsplit=1)[0]
    attr, sep, value = first.partition("=")
    if not sep:
        raise MappingProblem(f"not a distinguished name component: {rdn[:80]!r}")
    return attr.strip().lower(), _unescape(value)


def normalise_dn(dn: str) -> str:
    """A comparison key: attribute types and values lower-cased, escapes undone."""
    if "\\" not in dn and "+" not in dn and ";" not in dn:
        # The common case, kept cheap: a sync normalises every user DN once per run.
        out = []
        for part in dn.split(","):
            attr, _, value = part.partition("=")
            out.append(f"{attr.strip().lower()}={value.strip().lower()}")
        return ",".join(out)
    # Escape separators again so "cn=a\\,ou=b" and "cn=a,ou=b" keep distinct keys.
    return ",".join(f"{a}={_key_escape(v.lower())}" for a, v in parse_dn(dn))


def _key_escape(value: str) -> str:
    for ch in ("\\", ",", "+", ";"):
        value = value.replace(ch, "\\" + ch)
    return value


def dn_key(dn: str) -> str:
    """`normalise_dn`, interned so equal DNs share one string object."""
    return sys.intern(normalise_dn(dn))


def department_from_dn(dn: str, base: str, *, include_self: bool = False) -> str | None:
    """The OU names between `base` and the entry, outermost first, as a path.

    `uid=z,ou=费用核算组,ou=财务部,ou=总部,ou=people,dc=example,dc=com` under base
    `ou=people,dc=example,dc=com` -> `/总部/财务部/费用核算组`. For an OU entry itself
    pass `include_self=True`. Entries not under `base`, or directly in it, have none.
    """
    rdns = parse_dn(dn)
    base_rdns = [(a, v.lower()) for a, v in parse_dn(base)] if base else []
    if base_rdns:
        tail = [(a, v.lower()) for a, v in rdns[-len(base_rdns) :]]
        if len(rdns) < len(base_rdns) or tail != base_rdns:
            return None
        inner = rdns[: len(rdns) - len(base_rdns)]
    else:
        inner = rdns
    if not include_self:
        inner = inner[1:]
    names = [v for a, v in reversed(inner) if a == "ou" and v]
    return "/" + "/".join(names) if names else None


def department_from_value(value: str | None) -> str | None:
    if not value:
        return None
    parts = [p.strip() for p in value.replace("\\", "/").split("/") if p.strip()]
    return "/" + "/".join(parts) if parts else None

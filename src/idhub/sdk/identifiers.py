"""The canonical spelling idhub compares names and department paths in, for systems.

The decision API answers about canonical names: `Bob`, ` bob ` and `ｂｏｂ` are all `bob`, and
`/总部/华东区/` or `/总部/华东区/../财务部` are not department paths at all. A system that filters
its own rows with `DataScope.sql_where` compares text in its database, so it stores owners and
department paths in this spelling (or adds a column that holds it):

    row.owner = canonical_name(username)
    row.dept = canonical_path(department)

The rules are idhub's (docs/policies.md, "Canonical names"); this copy exists because the SDK
never imports the server, and idhub's tests pin that both give the same answer.
"""

from __future__ import annotations

import unicodedata

SEPARATOR = "/"


class InvalidPath(ValueError):
    """Not a department path idhub accepts (dot or empty segments, no leading `/`)."""


def _compatible(text: str) -> str:
    if text.isascii():
        return text
    value = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in value if unicodedata.category(ch) != "Cf")


def canonical_name(text: str) -> str:
    """NFKC, format characters removed, case folded, NFKC again, trimmed."""
    if text.isascii():
        return text.strip().lower()
    return unicodedata.normalize("NFKC", _compatible(text).casefold()).strip()


def canonical_path(text: str) -> str:
    """`/A/B/C` with every segment a canonical name ("" stays ""); `InvalidPath` otherwise."""
    if text == "":
        return ""
    # The whole path first, so a full-width solidus separates segments.
    value = _compatible(text).strip()
    if not value.startswith(SEPARATOR):
        raise InvalidPath(f"department path {text!r} must start with /")
    segments = [canonical_name(part) for part in value[1:].split(SEPARATOR)]
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidPath(f"department path {text!r} has an empty, '.' or '..' segment")
        if SEPARATOR in segment or any(unicodedata.category(ch) == "Cc" for ch in segment):
            raise InvalidPath(f"department path {text!r} contains control characters")
    return SEPARATOR + SEPARATOR.join(segments)

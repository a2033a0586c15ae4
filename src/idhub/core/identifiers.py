"""The one canonical spelling of every identifier a permission decision compares.

A deny rule written for `bob` must also catch `Bob`, ` bob ` and `ｂｏｂ`: decisions compare
text, so every name is brought to one form before it is compared, in the directory the engine
compiles, in the policy files as they are loaded and in every request. The rules (the table is
in docs/policies.md):

* names (usernames, group, role, domain, resource type and action names, department path
  segments): Unicode NFKC (full-width letters and digits become ASCII, the ideographic space
  becomes a space), format characters such as zero-width spaces removed, case folded, NFKC
  again (folding can undo it), and trimmed. Every one of these names is case-insensitive in
  idhub: they come from directories that compare them case-insensitively (LDAP, OA systems),
  and two people, groups or departments told apart only by letter case are a mistake to
  report, not a distinction to keep;
* department paths: `/A/B/C`, each segment a canonical name. `.`, `..`, empty segments
  (doubled or trailing separators) and a missing leading `/` are refused, never resolved: a
  path is compared segment by segment, and a path that would need resolving is not a path
  any system stores;
* OIDC subjects (`sub`) are opaque, case-sensitive stable ids (OpenID Connect Core 5.7) and
  are only trimmed.

`idhub.sdk` carries the same rules for systems (`idhub.sdk.identifiers`); a test pins that
both agree.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from idhub.errors import InvalidInput

USER_PREFIX = "user:"
SEPARATOR = "/"
_DOT_SEGMENTS = frozenset((".", ".."))
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, exactly
# Requests repeat the same few thousand department paths and non-ASCII names: each is worked
# out once per process (bounded, so a stream of made-up names only evicts).
_CACHED = 32768


def _compatible(text: str) -> str:
    """NFKC without format characters (zero-width spaces and joiners, soft hyphens)."""
    if text.isascii():
        return text
    value = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in value if unicodedata.category(ch) != "Cf")


def canonical_name(text: str) -> str:
    """The canonical form of a case-insensitive name ("" stays "")."""
    if text.isascii():
        # ASCII is already NFKC and has no format characters; folding is lowercasing.
        return text.strip().lower()
    return _folded(text)


@functools.lru_cache(maxsize=_CACHED)
def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", _compatible(text).casefold()).strip()


def canonical_subject(text: str) -> str:
    """A policy subject: `user:<canonical username>` for people, a canonical role name else."""
    value = canonical_name(text)
    if value.startswith(USER_PREFIX):
        return USER_PREFIX + value[len(USER_PREFIX) :].strip()
    return value


def canonical_sub(text: str) -> str:
    """An OIDC subject: opaque and case-sensitive, so only trimmed."""
    return text.strip()


def path_segments(text: str) -> tuple[str, ...]:
    """The canonical segments of a department path; `InvalidInput` naming what is wrong."""
    # The whole path first: a full-width solidus is a separator, not part of a segment that
    # would turn into `/../` once it is normalised on its own.
    value = _compatible(text).strip()
    if not value.startswith(SEPARATOR):
        raise InvalidInput(f"department path {text!r} must start with / (like /总部/华东区)")
    segments = tuple(canonical_name(part) for part in value[1:].split(SEPARATOR))
    for segment in segments:
        if segment == "":
            raise InvalidInput(
                f"department path {text!r} has an empty segment (doubled or trailing /)"
            )
        if segment in _DOT_SEGMENTS:
            raise InvalidInput(f"department path {text!r} has a {segment!r} segment")
        if SEPARATOR in segment or _CONTROL.search(segment):
            raise InvalidInput(f"department path {text!r} contains control characters")
    return segments


def canonical_path(text: str) -> str:
    """The canonical form of a department path ("" stays "": no department given)."""
    if text == "":
        return ""
    return _canonical_path(text)


@functools.lru_cache(maxsize=_CACHED)
def _canonical_path(text: str) -> str:
    # A refused path raises, and lru_cache keeps only returned values.
    return SEPARATOR + SEPARATOR.join(path_segments(text))


def is_under(path: str, ancestor: str) -> bool:
    """Whether canonical `path` is canonical `ancestor` or below it, segment by segment
    (`/总部/华东` is not under `/总部/华东区`). Canonical paths have no empty or dot segments
    and no trailing separator, so a segment boundary is exactly a `/` after the ancestor."""
    if not path or not ancestor:
        return False
    return path == ancestor or (
        path.startswith(ancestor) and path[len(ancestor) : len(ancestor) + 1] == SEPARATOR
    )

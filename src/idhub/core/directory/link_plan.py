"""Planning the changes for a person several sources describe (or one source links to).

`plan.plan_user` handles the common case (one source, the creating one) exactly as before;
this module takes over when the person has other links, when this source is not the creating
one, or when a new link is being made. The user's columns become what precedence says
(core/directory/linking.py) over every linked source's last word; this source's word is
recorded on its link; a disable from a source that is not authoritative for the person only
drops its link.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idhub.core.directory.dn import normalise_dn
from idhub.core.directory.linking import LinkRules, Match, check_authoritative, resolve, value_hash
from idhub.core.directory.mapping import SourceUser
from idhub.core.directory.plan import (
    DISABLED_IN_SOURCE,
    GONE_FROM_SOURCE,
    SYNC_REASONS,
    ChangeKind,
    StoredUser,
    UserChange,
    _attributes_after,
    plan_gone,
)
from idhub.core.identity import LOCAL_SOURCE

# What a source says about a person and a link records (precedence picks among them).
RESOLVED = ("display_name", "email", "phone", "employee_id", "department")
RECORDED = (*RESOLVED, "dn")


def check_simple(stored: StoredUser, source: str) -> bool:
    """True when only the creating source describes the person: today's plan applies."""
    return not stored.others and stored.own is None and stored.creator == source


def entry_values(entry: SourceUser) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in RECORDED}


def row_values(stored: StoredUser) -> dict[str, Any]:
    return {name: getattr(stored, name) for name in RECORDED}


def linked_sources(stored: StoredUser, source: str) -> list[str]:
    return [source, *(s for s, _ in stored.others if s != source)]


def plan_linked(
    stored: StoredUser,
    entry: SourceUser,
    *,
    source: str,
    rules: LinkRules,
    match: Match | None = None,
) -> UserChange | None:
    """The change `entry` (from `source`) asks of a person other sources may describe too.

    `match`: the key match that makes a new link (kind "link"); None for an existing link."""
    row = row_values(stored)
    mine = entry_values(entry)
    said: dict[str, Mapping[str, Any]] = {s: (attrs or row) for s, attrs in stored.others}
    if stored.creator == LOCAL_SOURCE and LOCAL_SOURCE not in said:
        # An admin-made account being linked: what the admin entered (the row) is its word,
        # kept on a `local` link from now on (adapters/_links.py); as the creating source it
        # wins the attributes no precedence is set for.
        said[LOCAL_SOURCE] = row
    said[source] = mine
    linked = linked_sources(stored, source)
    authoritative = check_authoritative(rules, source, creator=stored.creator, linked=linked)
    if entry.disabled and not authoritative and match is None:
        return unlink(stored, source, entry)
    diff: dict[str, tuple[Any, Any]] = {}
    values: dict[str, Any] = {}
    for name in RESOLVED:
        value = resolve(rules, name, {s: v.get(name) for s, v in said.items()}, stored.creator)
        values[name] = value
        if row[name] != value:
            diff[name] = (row[name], value)
    # The username and DN columns stay the creating source's (a DN only means something to
    # the directory that wrote it; each link records its own).
    values["username"] = stored.username
    values["dn"] = stored.dn
    if source == stored.creator:
        values["username"], values["dn"] = entry.username, entry.dn
        if entry.username != stored.username:
            diff["username"] = (stored.username, entry.username)
        if not _same_dn(stored.dn, entry.dn):
            diff["dn"] = (stored.dn, entry.dn)
    # Keys the source owns in `attributes` (DingTalk's unionid, which sign-in matches on) are
    # its own whatever precedence says: no other source writes them.
    attributes = _attributes_after(stored, entry, diff)
    kind: ChangeKind | None = None
    reason = stored.disabled_reason
    if authoritative:
        if entry.disabled and not stored.disabled:
            kind, reason = "disable", DISABLED_IN_SOURCE
            diff["disabled"] = (False, True)
        elif not entry.disabled and stored.disabled and stored.disabled_reason in SYNC_REASONS:
            kind, reason = "enable", None
            diff["disabled"] = (True, False)
        elif entry.disabled and stored.disabled and stored.disabled_reason == GONE_FROM_SOURCE:
            reason = DISABLED_IN_SOURCE
            diff["disabled_reason"] = (GONE_FROM_SOURCE, DISABLED_IN_SOURCE)
    own = stored.own if stored.own is not None else (row if stored.creator == source else None)
    link_attrs = mine if (match is not None or own != mine) else None
    fill: dict[str, Any] | None = None
    if match is not None:
        kind = "link"
        # The links that so far meant "the row's values" record them now: from here on the
        # row is a blend and no longer says what any one source said.
        has_local = any(s == LOCAL_SOURCE for s, _ in stored.others)
        fill = {"row": row, "creator": stored.creator, "has_local": has_local}
    if not diff and link_attrs is None:
        return None
    if kind is None:
        kind = "move" if "department" in diff else "update"
    return UserChange(
        kind=kind,
        external_id=entry.external_id,
        username=stored.username,
        fields=diff,
        user_id=stored.id,
        entry=entry,
        disabled_reason=reason,
        values=values,
        link_attrs=link_attrs,
        link_key=match.key if match else None,
        link_hash=value_hash(match.value) if match and match.value else None,
        fill_attrs=fill,
        attributes=attributes,
    )


def unlink(stored: StoredUser, source: str, entry: SourceUser | None) -> UserChange:
    """This source no longer describes the person (disabled or gone there) and may not
    disable them: its link is dropped; the person and their other links stay."""
    return UserChange(
        kind="unlink",
        external_id=stored.external_id,
        username=stored.username,
        fields={},
        user_id=stored.id,
        entry=entry,
        disabled_reason=stored.disabled_reason,
    )


def plan_gone_linked(stored: StoredUser, *, source: str, rules: LinkRules) -> UserChange | None:
    """A person the source no longer lists: disabled if it is authoritative for them, else
    only its link is dropped."""
    linked = linked_sources(stored, source)
    if check_authoritative(rules, source, creator=stored.creator, linked=linked):
        return plan_gone(stored)
    return unlink(stored, source, None)


def _same_dn(before: str | None, after: str | None) -> bool:
    if before is None or after is None:
        return before == after
    return before == after or normalise_dn(before) == normalise_dn(after)

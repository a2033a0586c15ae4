"""`sod.yaml` of a policy directory: segregation-of-duties rules (core/authz/sod_rules.py),
read like the other policy files so each problem names `file:line`.

    conflicts:
      - id: approve-and-pay
        severity: block
        reason: 审批报销的人不得付款
        sides: [reimburse:dept_manager, reimburse:payment:execute]
        scope: department          # optional: only within one department subtree
    exceptions:
      - {rule: approve-and-pay, user: frank, approved_by: wang, reason: ..., expires: 2027-06-30}
    records:
      - id: own-expense-report
        reason: 提交人不得审批、审核或支付自己的报销单
        domain: reimburse
        type: expense_report
        owner: created_by
        steps: {created_by: [create, submit], approved_by: [approve], paid_by: [pay]}
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from idhub.adapters.policy_yaml import LINE, PolicyReader
from idhub.core.authz.model import NAME_RE, Source
from idhub.core.authz.sod_rules import (
    DAY,
    ConflictRule,
    RecordRule,
    Side,
    SodException,
    SodPolicy,
    parse_side,
)

FILE = "sod.yaml"
_SECTIONS = ("conflicts", "exceptions", "records")


def _line(item: Any) -> int:
    return int(item.get(LINE, 1)) if isinstance(item, dict) else 1


def _keys(reader: PolicyReader, item: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    extra = sorted(str(k) for k in item if k not in (*allowed, LINE))
    if extra:
        reader.error(f"unknown key {extra[0]!r} (use {', '.join(allowed)})", FILE, _line(item))
        return False
    return True


def _text(
    reader: PolicyReader, item: dict[str, Any], key: str, *, name: bool = False
) -> str | None:
    value = item.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        reader.error(f"`{key}` is required and must be text", FILE, _line(item))
        return None
    if name and not NAME_RE.match(value.strip()) and not value.strip().isidentifier():
        reader.error(f"{key} {value!r} is not a valid name", FILE, _line(item))
        return None
    return value.strip()


def _conflict(reader: PolicyReader, item: dict[str, Any]) -> ConflictRule | None:
    if not _keys(reader, item, ("id", "severity", "reason", "sides", "scope")):
        return None
    line = _line(item)
    rule_id, reason = _text(reader, item, "id", name=True), _text(reader, item, "reason")
    severity = item.get("severity")
    if severity not in ("block", "warn"):
        reader.error(f"severity must be block or warn, not {severity!r}", FILE, line)
        return None
    scope = item.get("scope", "anywhere")
    if scope not in ("anywhere", "department"):
        reader.error(f"scope must be anywhere or department, not {scope!r}", FILE, line)
        return None
    raw = item.get("sides")
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(s, str) for s in raw):
        reader.error(
            "`sides` must list at least two duties (domain:role or domain:type:action)", FILE, line
        )
        return None
    sides: list[Side] = []
    for text in raw:
        try:
            sides.append(parse_side(text))
        except ValueError as exc:
            reader.error(str(exc), FILE, line)
            return None
    if rule_id is None or reason is None:
        return None
    return ConflictRule(rule_id, severity, reason, tuple(sides), Source(FILE, line), scope)


def _expiry(reader: PolicyReader, item: dict[str, Any]) -> tuple[str, float] | None:
    value = item.get("expires")
    day: dt.date | None = None
    if isinstance(value, dt.datetime):
        day = value.date()
    elif isinstance(value, dt.date):
        day = value
    elif isinstance(value, str):
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            day = None
    if day is None:
        reader.error(f"expires must be a date like 2027-06-30, not {value!r}", FILE, _line(item))
        return None
    # The exception holds through the whole of its last day (UTC).
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return day.isoformat(), start + DAY


def _exception(reader: PolicyReader, item: dict[str, Any]) -> SodException | None:
    if not _keys(reader, item, ("rule", "user", "approved_by", "reason", "expires")):
        return None
    rule, user = _text(reader, item, "rule", name=True), _text(reader, item, "user")
    approver, reason = _text(reader, item, "approved_by"), _text(reader, item, "reason")
    expiry = _expiry(reader, item)
    if rule is None or user is None or approver is None or reason is None or expiry is None:
        return None
    return SodException(
        rule, user, approver, reason, expiry[1], expiry[0], Source(FILE, _line(item))
    )


def _record(reader: PolicyReader, item: dict[str, Any]) -> RecordRule | None:
    if not _keys(reader, item, ("id", "reason", "domain", "type", "owner", "steps")):
        return None
    line = _line(item)
    rule_id, reason = _text(reader, item, "id", name=True), _text(reader, item, "reason")
    domain, obj = _text(reader, item, "domain", name=True), _text(reader, item, "type", name=True)
    owner = item.get("owner", "")
    if not isinstance(owner, str):
        reader.error("owner must name one of the steps", FILE, line)
        return None
    raw = item.get("steps")
    steps: list[tuple[str, tuple[str, ...]]] = []
    if not isinstance(raw, dict) or len([k for k in raw if k != LINE]) < 2:
        reader.error("`steps` must map at least two actors to their actions", FILE, line)
        return None
    for actor, actions in raw.items():
        if actor == LINE:
            continue
        if isinstance(actions, str):
            actions = [actions]
        if not isinstance(actor, str) or not NAME_RE.match(actor):
            reader.error(f"actor {actor!r} is not a valid name (like approved_by)", FILE, line)
            return None
        if (
            not isinstance(actions, list)
            or not actions
            or not all(isinstance(a, str) for a in actions)
        ):
            reader.error(f"actions of step {actor!r} must be a list of action names", FILE, line)
            return None
        steps.append((actor, tuple(actions)))
    if rule_id is None or reason is None or domain is None or obj is None:
        return None
    return RecordRule(rule_id, reason, domain, obj, tuple(steps), Source(FILE, line), owner)


def read_sod(reader: PolicyReader) -> SodPolicy | None:
    path = reader.root / FILE
    if not path.exists():
        return None
    doc = reader.yaml(path)
    if doc is None:
        return SodPolicy()
    if not isinstance(doc, dict):
        reader.error("expected a mapping of conflicts, exceptions and records", FILE)
        return SodPolicy()
    for key in doc:
        if key != LINE and key not in _SECTIONS:
            reader.error(f"unknown section {key!r} (use {', '.join(_SECTIONS)})", FILE, _line(doc))
    parsed: dict[str, list[Any]] = {}
    readers = {"conflicts": _conflict, "exceptions": _exception, "records": _record}
    for section, read in readers.items():
        items = doc.get(section) or []
        out: list[Any] = parsed.setdefault(section, [])
        if not isinstance(items, list):
            reader.error(f"`{section}` must be a list", FILE, _line(doc))
            continue
        for item in items:
            if not isinstance(item, dict):
                reader.error(f"each entry of `{section}` is a mapping", FILE, _line(doc))
                continue
            value = read(reader, item)
            if value is not None:
                out.append(value)
    return SodPolicy(
        conflicts=tuple(parsed["conflicts"]),
        exceptions=tuple(parsed["exceptions"]),
        records=tuple(parsed["records"]),
    )

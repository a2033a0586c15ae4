"""What a data-scope answer says a user may see, and the SQL condition that selects exactly
those rows of a system's own table (`DataScope.sql_where`). The table's owner and department
columns hold the canonical spelling (`idhub.sdk.identifiers`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from idhub.sdk.identifiers import canonical_name, canonical_path


@dataclass(frozen=True)
class DepartmentScope:
    path: str
    subtree: bool


@dataclass(frozen=True)
class DataScope:
    all: bool
    self: bool
    departments: tuple[DepartmentScope, ...]
    exclude_self: bool = False
    exclude_departments: tuple[DepartmentScope, ...] = ()
    policy_version: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The canonical username idhub resolved the question to ("" when it named nobody, then
    # `reason` says why and the scope is empty).
    user: str = ""
    reason: str = ""

    def sql_where(
        self, *, owner_column: str, dept_column: str, me: str | None = None, style: str = "named"
    ) -> tuple[str, dict[str, Any]]:
        """A condition and its parameters, e.g. for SQLAlchemy `text()` (named style).

        Column names are the caller's own identifiers; values always go in parameters. The
        columns hold canonical names and paths (`idhub.sdk.identifiers`); `me` (the owner
        value that is the user's own, by default the username idhub resolved) may be spelled
        any way. A department is below another segment by segment, and a stored path that is
        not canonical (`/a/../b`, `/a//b`, a trailing `/`) is below nothing."""
        params: dict[str, Any] = {"idhub_me": canonical_name(self.user if me is None else me)}
        allow: list[str] = []
        if self.all:
            allow.append("1=1")
        if self.self:
            allow.append(f"{owner_column} = :idhub_me")
        for i, dept in enumerate(self.departments):
            allow.append(_dept_condition(dept, dept_column, f"idhub_d{i}", params))
        condition = "(" + (" OR ".join(allow) if allow else "1=0") + ")"
        deny: list[str] = []
        if self.exclude_self:
            deny.append(f"{owner_column} = :idhub_me")
        for i, dept in enumerate(self.exclude_departments):
            deny.append(_dept_condition(dept, dept_column, f"idhub_x{i}", params))
        if deny:
            condition += " AND NOT (" + " OR ".join(deny) + ")"
        return condition, params


# Stored paths that `LIKE '/a/%'` would take for being below /a although they are not paths:
# dot segments (`/a/../b`), doubled separators and a trailing separator.
_NOT_PATHS = ("%/./%", "%/../%", "%/.", "%/..", "%//%", "%/")


def _dept_condition(dept: DepartmentScope, column: str, name: str, params: dict[str, Any]) -> str:
    path = canonical_path(dept.path)
    params[name] = path
    if not dept.subtree:
        return f"{column} = :{name}"
    # LIKE wildcards inside a department name must match literally.
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params[name + "_below"] = escaped + "/%"
    guards = ""
    for i, pattern in enumerate(_NOT_PATHS):
        params[f"idhub_not_path{i}"] = pattern
        guards += f" AND {column} NOT LIKE :idhub_not_path{i}"
    return f"({column} = :{name} OR ({column} LIKE :{name}_below ESCAPE '\\'{guards}))"


def data_scope(body: Mapping[str, Any]) -> DataScope:
    """The `/api/v1/authz/scopes` answer as a `DataScope`."""
    exclude = body.get("exclude") or {}
    return DataScope(
        all=bool(body["all"]),
        self=bool(body["self"]),
        departments=tuple(_depts(body.get("departments", []))),
        exclude_self=bool(exclude.get("self", False)),
        exclude_departments=tuple(_depts(exclude.get("departments", []))),
        policy_version=str(body.get("policy_version", "")),
        raw=body,
        user=str(body.get("user") or ""),
        reason=str(body.get("reason") or ""),
    )


def _depts(items: Sequence[Mapping[str, Any]]) -> list[DepartmentScope]:
    return [DepartmentScope(str(d["path"]), bool(d.get("subtree", False))) for d in items]

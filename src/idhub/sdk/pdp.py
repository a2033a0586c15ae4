"""A client for idhub's decision API: yes/no decisions and data-scope filters.

It gets its own client-credentials token (`resource=idhub`, scope `authz`) and renews it
shortly before it expires. `DataScope.sql_where` turns a scope answer into a parameterised
SQL condition for the system's own tables, whose owner and department columns hold the
canonical spelling (`idhub.sdk.identifiers`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from idhub.sdk.identifiers import canonical_name, canonical_path


class PdpError(Exception):
    """The decision API could not answer; treat as deny."""


class Subject(str):
    """A user named by the subject idhub issued (`sub` of an ID or access token), not by
    username: `pdp.check(Subject(claims["sub"]), ...)`. A plain `str` is a username."""

    __slots__ = ()


# Whom a question is about: a username, a `Subject`, or validated token claims (their `sub`).
User = str | Subject | Mapping[str, Any]


def who(user: User) -> dict[str, str]:
    """The request field naming `user`: `{"user": name}` or `{"sub": sub}`."""
    if isinstance(user, Subject):
        return {"sub": str(user)}
    if isinstance(user, str):
        return {"user": user}
    if isinstance(user, Mapping):
        sub = user.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ValueError("these claims carry no `sub`: pass validated idhub token claims")
        if sub == user.get("client_id"):
            # A client-credentials token: the system itself, no person behind it.
            raise ValueError(f"this token was issued to system {sub!r}, not to a user")
        return {"sub": sub}
    raise TypeError(f"a user is a username, a Subject or token claims, not {type(user).__name__}")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    policy_version: str


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


class PdpClient:
    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        client_secret: str,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = issuer.rstrip("/")
        self._auth = (client_id, client_secret)
        self._http = http or httpx.Client(timeout=5.0)
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    def check(
        self,
        user: User,
        domain: str,
        type: str,
        action: str,
        *,
        owner: str | None = None,
        dept: str | None = None,
        resource_id: str | None = None,
    ) -> Decision:
        request = _request(user, domain, type, action, owner, dept, resource_id)
        body = self._post("/api/v1/authz/check", request)
        return Decision(bool(body["allowed"]), str(body.get("reason", "")), body["policy_version"])

    def check_many(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Up to 1,000 requests decided on one policy version, in order. Each names its user
        as `user` (a username, a `Subject` or token claims) or `sub`."""
        body = self._post("/api/v1/authz/check", {"requests": [_named(r) for r in requests]})
        version = body["policy_version"]
        return [
            Decision(bool(r["allowed"]), str(r.get("reason", "")), version) for r in body["results"]
        ]

    def scopes(self, user: User, domain: str, type: str, action: str) -> DataScope:
        body = self._post(
            "/api/v1/authz/scopes", {**who(user), "domain": domain, "type": type, "action": action}
        )
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

    def _post(self, path: str, payload: Any) -> dict[str, Any]:
        for attempt in (1, 2):
            token = self._access_token(force=attempt == 2)
            try:
                response = self._http.post(
                    self._base + path, json=payload, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.HTTPError as exc:
                raise PdpError(f"decision API unreachable: {exc}") from exc
            if response.status_code == 401 and attempt == 1:
                continue  # token revoked or keys rotated: get a fresh one once
            if response.status_code != 200:
                raise PdpError(_describe(response))
            result: dict[str, Any] = response.json()
            return result
        raise PdpError("decision API refused a fresh token")

    def _access_token(self, *, force: bool) -> str:
        with self._lock:
            if not force and self._token and self._clock() < self._token_expires - 30:
                return self._token
            try:
                response = self._http.post(
                    self._base + "/token",
                    data={
                        "grant_type": "client_credentials",
                        "resource": "idhub",
                        "scope": "authz",
                    },
                    auth=self._auth,
                )
            except httpx.HTTPError as exc:
                raise PdpError(f"token endpoint unreachable: {exc}") from exc
            if response.status_code != 200:
                raise PdpError(_describe(response))
            body = response.json()
            self._token = str(body["access_token"])
            self._token_expires = self._clock() + float(body.get("expires_in", 60))
            return self._token


def _named(request: Mapping[str, Any]) -> dict[str, Any]:
    """A `check_many` entry with its `user` turned into the field the API takes."""
    named = dict(request)
    user = named.get("user")
    if user is not None and type(user) is not str:
        del named["user"]
        named.update(who(user))
    return named


def _request(
    user: User,
    domain: str,
    type_: str,
    action: str,
    owner: str | None,
    dept: str | None,
    resource_id: str | None,
) -> dict[str, Any]:
    request: dict[str, Any] = {**who(user), "domain": domain, "type": type_, "action": action}
    resource = {
        k: v for k, v in (("owner", owner), ("dept", dept), ("id", resource_id)) if v is not None
    }
    if resource:
        request["resource"] = resource
    return request


def _depts(items: Sequence[Mapping[str, Any]]) -> list[DepartmentScope]:
    return [DepartmentScope(str(d["path"]), bool(d.get("subtree", False))) for d in items]


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body.get('error')}: {body.get('error_description', '')}"
    except ValueError:
        return f"{response.status_code} from the decision API"

"""A client for idhub's decision API: yes/no decisions (`check`, `check_many`) and data-scope
filters (`scopes`).

It gets its own client-credentials token (`resource=idhub`, scope `authz`) and renews it
shortly before it expires (or at once when the API refuses it). Answers are kept for a few
seconds (`cache_ttl`, `idhub.sdk.decision_cache`) and dropped as soon as an answer shows
another policy version. `DataScope.sql_where` turns a scope answer into a parameterised SQL
condition for the system's own tables (`idhub.sdk.data_scope`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from idhub.sdk.data_scope import DataScope, DepartmentScope, data_scope
from idhub.sdk.decision_cache import DecisionCache, cache_key
from idhub.sdk.subjects import Subject, User, who

__all__ = [
    "DataScope",
    "Decision",
    "DepartmentScope",
    "PdpClient",
    "PdpError",
    "Subject",
    "User",
    "who",
]

# Renew the client's own token this long before it expires (at most half its lifetime).
RENEW_BEFORE = 30.0


class PdpError(Exception):
    """The decision API could not answer; treat as deny. `status` and `error` are the HTTP
    status and the API's error code when it answered (0 and "" when it could not be reached)."""

    def __init__(self, message: str, *, status: int = 0, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    policy_version: str


def _keepable(reason: str) -> bool:
    # Somebody idhub does not know yet may be created or synced a moment later.
    return not reason.startswith(("unknown user", "unknown subject"))


class PdpClient:
    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        client_secret: str,
        http: httpx.Client | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = issuer.rstrip("/")
        self._auth = (client_id, client_secret)
        self._http = http or httpx.Client(timeout=5.0)
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()
        self._decisions: DecisionCache[Decision] = DecisionCache(
            ttl=cache_ttl, size=cache_size, clock=clock
        )
        self._scopes: DecisionCache[DataScope] = DecisionCache(
            ttl=cache_ttl, size=cache_size, clock=clock
        )

    @property
    def policy_version(self) -> str:
        """The newest policy version an answer carried ("" before the first)."""
        return self._decisions.version or self._scopes.version

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
        """May `user` (a username, a `Subject` or token claims) do `action` on this record?"""
        request = _request(user, domain, type, action, owner, dept, resource_id)
        key = cache_key("check", request)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        body = self._post("/api/v1/authz/check", request)
        decision = Decision(
            bool(body["allowed"]), str(body.get("reason", "")), str(body["policy_version"])
        )
        self._remember(key, decision)
        return decision

    def check_many(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Up to 1,000 requests decided on one policy version, in order. Each names its user
        as `user` (a username, a `Subject` or token claims) or `sub`."""
        named = [_named(r) for r in requests]
        keys = [cache_key("check", r) for r in named]
        known = [self._decisions.get(k) for k in keys]
        asked = [i for i, hit in enumerate(known) if hit is None]
        if not asked:
            return [hit for hit in known if hit is not None]
        decided = self._ask_many([named[i] for i in asked])
        version = decided[0].policy_version
        if any(hit is not None and hit.policy_version != version for hit in known):
            # Remembered answers of an older policy: the batch is decided on one version.
            decided, asked = self._ask_many(named), list(range(len(named)))
        answers = list(known)
        for i, decision in zip(asked, decided, strict=True):
            answers[i] = decision
            self._remember(keys[i], decision)
        return [answer for answer in answers if answer is not None]

    def scopes(self, user: User, domain: str, type: str, action: str) -> DataScope:
        """Which records of `type` the user may `action`: turn it into SQL with `sql_where`."""
        request = {**who(user), "domain": domain, "type": type, "action": action}
        key = cache_key("scopes", request)
        cached = self._scopes.get(key)
        if cached is not None:
            return cached
        scope = data_scope(self._post("/api/v1/authz/scopes", request))
        self._decisions.saw(scope.policy_version)
        if scope.user:
            self._scopes.put(key, scope, scope.policy_version)
        else:
            self._scopes.saw(scope.policy_version)
        return scope

    def _ask_many(self, requests: list[dict[str, Any]]) -> list[Decision]:
        body = self._post("/api/v1/authz/check", {"requests": requests})
        version = str(body["policy_version"])
        return [
            Decision(bool(r["allowed"]), str(r.get("reason", "")), version) for r in body["results"]
        ]

    def _remember(self, key: str, decision: Decision) -> None:
        self._scopes.saw(decision.policy_version)
        if _keepable(decision.reason):
            self._decisions.put(key, decision, decision.policy_version)
        else:
            self._decisions.saw(decision.policy_version)

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
                raise _error(response, "the decision API")
            try:
                result: dict[str, Any] = response.json()
            except ValueError:
                raise PdpError("the decision API answered something other than JSON") from None
            return result
        raise PdpError("the decision API refused a fresh token", status=401)

    def _access_token(self, *, force: bool) -> str:
        with self._lock:
            if not force and self._token and self._clock() < self._renew_at:
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
                raise _error(response, "the token endpoint")
            body = response.json()
            lifetime = float(body.get("expires_in", 60))
            self._token = str(body["access_token"])
            self._renew_at = self._clock() + lifetime - min(RENEW_BEFORE, lifetime / 2)
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


def _error(response: httpx.Response, what: str) -> PdpError:
    try:
        body = response.json()
        error = str(body.get("error") or "")
        message = f"{response.status_code} {error}: {body.get('error_description', '')}"
    except (ValueError, AttributeError):
        error, message = "", f"{response.status_code} from {what}"
    return PdpError(message, status=response.status_code, error=error)

"""Calling an OA platform's server API (DingTalk, WeCom) the way those servers behave.

Both answer errors as `errcode` in an HTTP 200 body; DingTalk's gateway also answers
`errcode 88` with the real reason in `sub_code`. An access token may stop working before
its `expires_in` (refreshed once per call, then the call is retried); rate limits are waited
out with growing pauses (bounded in total, so a run resumes within itself or fails clearly);
"system busy" and gateway 5xx are retried a bounded number of times. Everything else is an
`OaApiError` naming the call and the platform's code, never the token or the secret.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from idhub.config import OaSourceSettings
from idhub.errors import DirectoryError

if TYPE_CHECKING:
    # httpx is imported with the first call's client: it brings its command line (click, rich,
    # Pygments, ~10 MB), which a worker that never syncs nor signs in through an OA platform
    # need not carry.
    import httpx


class OaApiError(DirectoryError):
    code = "directory_api_error"

    def __init__(
        self, message: str, *, errcode: str | None = None, unavailable: bool = False
    ) -> None:
        super().__init__(message)
        # The platform's own code (a sign-in tells "code refused" from "server down" by these).
        self.errcode = errcode
        self.unavailable = unavailable


class _RedactTokens(logging.Filter):
    """httpx logs each request's URL at INFO; both platforms put the token in the query."""

    _pattern = re.compile(r"(access_token|appsecret|corpsecret)=[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        # Only httpx logs to this logger, so httpx is loaded by the time a record gets here.
        import httpx

        if record.args:
            record.args = tuple(
                self._pattern.sub(r"\1=***", str(a)) if isinstance(a, (str, httpx.URL)) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        record.msg = self._pattern.sub(r"\1=***", str(record.msg))
        return True


logging.getLogger("httpx").addFilter(_RedactTokens())


@dataclass(frozen=True)
class ApiRules:
    """How one platform spells its error codes (as strings: sub_codes may not be numbers)."""

    platform: str
    token_codes: frozenset[str]
    rate_codes: frozenset[str]
    busy_codes: frozenset[str]


class _Transient(Exception):
    """A failure worth another try: 5xx, a dropped connection, a timeout."""


# Fetches a token: (token, seconds it is valid for).
TokenFetcher = Callable[["OaApi"], tuple[str, float]]


class OaApi:
    def __init__(
        self,
        settings: OaSourceSettings,
        rules: ApiRules,
        fetch_token: TokenFetcher,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._fetch_token = fetch_token
        self._sleep = sleep
        self._clock = clock
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_until = 0.0
        self.calls: Counter[str] = Counter()  # path -> requests sent (retries included)

    def _http(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self._settings.base_url, timeout=self._settings.timeout
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ------------------------------------------------------------ tokens

    def _access_token(self) -> str:
        if self._token is None or self._clock() >= self._token_until:
            token, valid_for = self._fetch_token(self)
            self._token = token
            # Renewed a little early, as both platforms advise; early expiry is handled anyway.
            self._token_until = self._clock() + max(0.0, valid_for - 300)
        return self._token

    # ------------------------------------------------------------ calls

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        authenticated: bool = True,
    ) -> dict[str, Any]:
        """The JSON body of a successful call (errcode 0). Raises OaApiError."""
        where = f"{self._rules.platform} {path}"
        failures = 0
        waited = 0.0
        rate_hits = 0
        refreshed = False
        while True:
            query = dict(params or {})
            if authenticated:
                query["access_token"] = self._access_token()
            try:
                data = self._send(method, path, query, body)
            except _Transient as exc:
                failures += 1
                if failures > self._settings.retries:
                    raise OaApiError(
                        f"{where}: {exc} (gave up after {failures} tries)", unavailable=True
                    ) from None
                self._sleep(self._backoff(failures))
                continue
            code, message = _error_code(data)
            if code == "0":
                return data
            if authenticated and code in self._rules.token_codes and not refreshed:
                refreshed = True
                self._token = None
                continue
            if code in self._rules.rate_codes:
                rate_hits += 1
                pause = self._backoff(rate_hits)
                if waited + pause > self._settings.rate_limit_wait:
                    raise OaApiError(
                        f"{where}: still rate limited (errcode {code}) after waiting "
                        f"{waited:.1f} s; try again later",
                        errcode=code,
                        unavailable=True,
                    )
                waited += pause
                self._sleep(pause)
                continue
            if code in self._rules.busy_codes:
                failures += 1
                if failures > self._settings.retries:
                    raise OaApiError(
                        f"{where}: errcode {code} {message} (gave up after {failures} tries)",
                        errcode=code,
                        unavailable=True,
                    )
                self._sleep(self._backoff(failures))
                continue
            raise OaApiError(f"{where} answered errcode {code}: {message}", errcode=code)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._settings.retry_base * 2 ** (attempt - 1), 30.0))

    def _send(
        self, method: str, path: str, query: Mapping[str, Any], body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        import httpx

        self.calls[path] += 1
        try:
            response = self._http().request(method, "/" + path, params=query, json=body)
        except httpx.TimeoutException:
            raise _Transient("timed out") from None
        except httpx.TransportError as exc:
            # Only the exception's kind: its text may carry the URL, and the URL the token.
            raise _Transient(f"could not reach the server ({type(exc).__name__})") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise OaApiError(f"{self._rules.platform} {path}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise OaApiError(
                f"{self._rules.platform} {path}: HTTP {response.status_code} without a JSON body"
            ) from None
        if not isinstance(data, dict):
            raise OaApiError(f"{self._rules.platform} {path}: the answer is not a JSON object")
        return data


def _error_code(data: Mapping[str, Any]) -> tuple[str, str]:
    """(code, message); a DingTalk gateway answer (errcode 88) is reported by its sub_code."""
    code = str(data.get("errcode", 0))
    message = str(data.get("errmsg", ""))[:200]
    if code == "88" and data.get("sub_code") not in (None, ""):
        return str(data["sub_code"]), str(data.get("sub_msg") or message)[:200]
    return code, message

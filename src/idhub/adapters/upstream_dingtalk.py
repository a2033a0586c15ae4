"""Sign in with DingTalk (钉钉扫码登录): an `UpstreamProvider` for a configured DingTalk source.

The browser goes to `{login_url}/oauth2/auth` (client_id = the app's AppKey, scope openid,
prompt consent), the person scans the QR code (or confirms in DingTalk), and DingTalk sends
the browser back with `authCode`. idhub exchanges it with `POST {api_url}/v1.0/oauth2/
userAccessToken` (the AppKey and AppSecret, grantType authorization_code) and reads
`GET {api_url}/v1.0/contact/users/me` with the person's token (header
`x-acs-dingtalk-access-token`): its `unionId` is the identity's subject, which the contacts
sync stored as the user's `attributes.unionid`.

DingTalk's new API (api.dingtalk.com) answers errors as HTTP 4xx with `{"code", "message"}`
rather than the old API's errcode-in-200: a refused code is `code_refused`; 5xx, timeouts and
an unreachable server are `upstream_unavailable`. Neither the code nor a token is ever put in
an error message.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from idhub.config import OaSourceSettings
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity

if TYPE_CHECKING:
    # httpx is imported with the first sign-in's client: it brings its command line (click,
    # rich, Pygments, ~10 MB), which a worker whose users never choose DingTalk need not carry.
    import httpx

AMR_DINGTALK = "dingtalk"
MAX_CODE = 200


class DingTalkSignIn:
    kind = "dingtalk"
    label = "钉钉扫码登录"

    def __init__(self, settings: OaSourceSettings, *, name: str | None = None) -> None:
        self.name = name or f"dingtalk-{settings.name}"
        self.source = settings.source
        self._settings = settings
        self._login_url = settings.login_url or "https://login.dingtalk.com"
        self._api_url = settings.api_url or "https://api.dingtalk.com"
        # One client for the provider's life (thread-safe, keeps connections), made on the
        # first call: building one loads the CA bundle, ~90 ms here, which per sign-in was most
        # of its cost.
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self._api_url, timeout=self._settings.timeout)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        query = {
            "client_id": self._settings.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": "openid",
            "state": state,
            "prompt": "consent",
        }
        return f"{self._login_url}/oauth2/auth?{urlencode(query)}"

    def complete(
        self, *, redirect_uri: str, params: Mapping[str, str], nonce: str, code_verifier: str
    ) -> UpstreamIdentity:
        code = params.get("authCode") or params.get("code") or ""
        if not code or len(code) > MAX_CODE:
            raise UpstreamFailed(
                "DingTalk sent the browser back without a code", code="code_missing"
            )
        token = self._call(
            "POST",
            "/v1.0/oauth2/userAccessToken",
            json={
                "clientId": self._settings.client_id,
                "clientSecret": self._settings.client_secret.reveal(),
                "code": code,
                "grantType": "authorization_code",
            },
            refused="code_refused",
        )
        access = token.get("accessToken")
        if not isinstance(access, str) or not access:
            raise UpstreamFailed(
                "DingTalk's userAccessToken answer has no accessToken", code="upstream_error"
            )
        me = self._call(
            "GET",
            "/v1.0/contact/users/me",
            headers={"x-acs-dingtalk-access-token": access},
            refused="upstream_error",
        )
        union_id = me.get("unionId")
        if not isinstance(union_id, str) or not union_id:
            raise UpstreamFailed("DingTalk's users/me answer has no unionId", code="upstream_error")
        claims = {
            key: str(me[field])
            for key, field in (("unionid", "unionId"), ("openid", "openId"), ("name", "nick"))
            if me.get(field)
        }
        return UpstreamIdentity(
            provider=self.name, subject=union_id, claims=claims, amr=(AMR_DINGTALK,)
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        refused: str,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        import httpx

        try:
            response = self._http().request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            # Only the kind of failure: its text may carry the URL.
            raise UpstreamFailed(
                f"DingTalk {path} could not be reached ({type(exc).__name__})",
                code="upstream_unavailable",
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamFailed(
                f"DingTalk {path} answered HTTP {response.status_code}",
                code="upstream_unavailable",
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamFailed(
                f"DingTalk {path} answered HTTP {response.status_code} without a JSON object",
                code="upstream_error",
            )
        if response.status_code >= 400:
            reason = str(data.get("code") or response.status_code)[:100]
            raise UpstreamFailed(f"DingTalk {path} refused: {reason}", code=refused)
        return data

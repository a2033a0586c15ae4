"""Sign in with WeCom (企业微信登录): an `UpstreamProvider` for a configured WeCom source.

In an ordinary browser the person goes to `{login_url}/wwlogin/sso/login` (login_type CorpApp,
the corp id, the sign-in app's agent id) and scans the QR code with the WeCom app; inside the
WeCom app's own browser (user agent `wxwork`) there is nothing to scan, so it goes to the
in-app OAuth page `{app_login_url}/connect/oauth2/authorize` (scope snsapi_base, silent).
Both send the browser back with `code`, which `cgi-bin/auth/getuserinfo` turns into the
member's `userid`: the identity's subject, the synced user's `external_id`. A visitor who is
not a member of the corporation gets an `openid` instead and is refused (`not_member`).

The API calls go through the contacts sync's client (adapters/oa_api.py): errcode in 200
bodies, the access token from `cgi-bin/gettoken` refreshed once when it stops working early,
"system busy" and 5xx retried, with shorter bounds than a sync (a person is waiting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import urlencode

from idhub.adapters.oa_api import OaApiError
from idhub.adapters.wecom import WeComDirectory
from idhub.config import OaSourceSettings
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity

AMR_WECOM = "wecom"
MAX_CODE = 200
# WeCom's codes for a code it will not take: invalid, already used or expired, another app's.
REFUSED_CODES = frozenset({"40029", "40163", "50001", "42003"})


class WeComSignIn:
    kind = "wecom"
    label = "企业微信登录"

    def __init__(
        self,
        settings: OaSourceSettings,
        *,
        name: str | None = None,
        directory: WeComDirectory | None = None,
    ) -> None:
        self.name = name or f"wecom-{settings.name}"
        self.source = settings.source
        self._settings = settings
        self._login_url = settings.login_url or "https://login.work.weixin.qq.com"
        self._app_login_url = settings.app_login_url or "https://open.weixin.qq.com"
        # The sign-in app's token: its own secret when configured, else the sync's; bounded
        # retries and rate-limit waits, as a browser is waiting on the answer.
        api_settings = dataclasses.replace(
            settings,
            client_secret=settings.agent_secret or settings.client_secret,
            retries=min(settings.retries, 2),
            rate_limit_wait=min(settings.rate_limit_wait, 5.0),
            timeout=min(settings.timeout, 10.0),
        )
        self._directory = directory or WeComDirectory(api_settings)

    def close(self) -> None:
        self._directory.close()

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        query = {
            "login_type": "CorpApp",
            "appid": self._settings.client_id,
            "agentid": self._settings.agent_id or "",
            "redirect_uri": redirect_uri,
            "state": state,
        }
        return f"{self._login_url}/wwlogin/sso/login?{urlencode(query)}"

    def authorization_url_for(
        self, *, user_agent: str, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        if "wxwork" not in user_agent.lower():
            return self.authorization_url(
                redirect_uri=redirect_uri, state=state, nonce=nonce, code_verifier=code_verifier
            )
        query = {
            "appid": self._settings.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": "snsapi_base",
            "state": state,
            "agentid": self._settings.agent_id or "",
        }
        return f"{self._app_login_url}/connect/oauth2/authorize?{urlencode(query)}#wechat_redirect"

    def complete(
        self, *, redirect_uri: str, params: Mapping[str, str], nonce: str, code_verifier: str
    ) -> UpstreamIdentity:
        code = params.get("code") or ""
        if not code or len(code) > MAX_CODE:
            raise UpstreamFailed("WeCom sent the browser back without a code", code="code_missing")
        try:
            data = self._directory.api.call(
                "GET", "cgi-bin/auth/getuserinfo", params={"code": code}
            )
        except OaApiError as exc:
            if exc.unavailable or exc.errcode is None:
                raise UpstreamFailed(exc.message, code="upstream_unavailable") from None
            if exc.errcode in REFUSED_CODES:
                raise UpstreamFailed(exc.message, code="code_refused") from None
            raise UpstreamFailed(exc.message, code="upstream_error") from None
        userid = data.get("userid") or data.get("UserId")
        if not userid:
            if data.get("openid") or data.get("OpenId") or data.get("external_userid"):
                raise UpstreamFailed(
                    "this WeCom user is not a member of the corporation", code="not_member"
                )
            raise UpstreamFailed("WeCom's getuserinfo answer has no userid", code="upstream_error")
        return UpstreamIdentity(
            provider=self.name,
            subject=str(userid),
            claims={"userid": str(userid)},
            amr=(AMR_WECOM,),
        )

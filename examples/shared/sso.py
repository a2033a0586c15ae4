"""Signing in through idhub with authlib's Starlette client (authorization code + PKCE S256),
and signing out: locally, at idhub (RP-initiated logout), and when idhub says so (back-channel
logout, validated by `idhub.sdk.LogoutTokenValidator`).

The ID token says who the person is; the access token (aud = this system) says which roles
they hold here, and is what the decision API is asked about and what token exchange starts from.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any
from urllib.parse import quote, urlsplit

from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from examples.shared.local_sessions import LocalSessions, SignedIn
from examples.shared.pages import Pages
from examples.shared.settings import SystemSettings
from idhub.sdk import InvalidToken, LogoutTokenValidator, TokenValidator

SCOPE = "openid profile groups"
SESSION_KEY = "signin"
log = logging.getLogger("examples.sso")


class NotSignedIn(Exception):
    """The page needs a signed-in person; the app answers with a redirect to `/login`."""


class StaleForm(Exception):
    """A form without this session's CSRF token; the app answers 403."""


class Sso:
    def __init__(self, settings: SystemSettings, sessions: LocalSessions, *, pages: Pages) -> None:
        self.settings = settings
        self.pages = pages
        self.sessions = sessions
        self.oauth = OAuth()
        self.oauth.register(
            "idhub",
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            server_metadata_url=settings.issuer + "/.well-known/openid-configuration",
            client_kwargs={
                "scope": SCOPE,
                "code_challenge_method": "S256",
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )
        self._tokens: TokenValidator | None = None
        self.logout_tokens = LogoutTokenValidator(settings.issuer, client_id=settings.client_id)

    @property
    def tokens(self) -> TokenValidator:
        """Access tokens for this system, validated offline (discovery on first use, so the
        system may start before idhub does)."""
        if self._tokens is None:
            self._tokens = TokenValidator.from_discovery(
                self.settings.issuer, audience=self.settings.client_id
            )
        return self._tokens

    # ------------------------------------------------------------------ who is here

    def current(self, request: Request) -> SignedIn | None:
        row_id = request.session.get(SESSION_KEY)
        return self.sessions.get(row_id) if isinstance(row_id, str) else None

    def require(self, request: Request) -> SignedIn:
        user = self.current(request)
        if user is None:
            raise NotSignedIn
        return user

    def require_form(self, user: SignedIn, form: Any) -> None:
        """CSRF: every form carries the session's token."""
        sent = str(form.get("csrf", ""))
        if not hmac.compare_digest(sent.encode(), user.csrf.encode()):
            raise StaleForm("表单已过期 the form is stale or was not sent by this system")

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"  # a form cannot be replayed after signing in; start from the list
        return RedirectResponse(f"/login?next={quote(_local(target), safe='')}", status_code=303)

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/login", self.login, methods=["GET"]),
            Route("/callback", self.callback, methods=["GET"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/logged-out", self.logged_out, methods=["GET"]),
            Route("/backchannel-logout", self.backchannel_logout, methods=["POST"]),
        ]

    async def login(self, request: Request) -> Response:
        request.session["next"] = _local(request.query_params.get("next", "/"))
        client = self.oauth.create_client("idhub")
        return await client.authorize_redirect(request, self.settings.base_url + "/callback")  # type: ignore[no-any-return]

    async def callback(self, request: Request) -> Response:
        client = self.oauth.create_client("idhub")
        try:
            token = await client.authorize_access_token(request)
        except OAuthError as exc:
            log.warning("sign-in failed: %s", exc.error)
            return self.pages.error(request, None, f"登录失败 sign-in failed: {exc.error}", 400)
        try:
            access = await run_in_threadpool(self.tokens.validate, token["access_token"])
        except InvalidToken as exc:
            log.warning("idhub sent an access token this system cannot use: %s", exc)
            return self.pages.error(request, None, "登录失败 sign-in failed: unusable token", 502)
        request.session[SESSION_KEY] = await run_in_threadpool(
            lambda: self.sessions.start(
                id_claims=dict(token["userinfo"]), access_claims=access, token=token
            )
        )
        return RedirectResponse(_local(request.session.pop("next", "/")), status_code=303)

    async def logout(self, request: Request) -> Response:
        """Ends the local session, then idhub's (which tells every other system)."""
        user = self.current(request)
        request.session.pop(SESSION_KEY, None)
        if user is None:
            return RedirectResponse("/logged-out", status_code=303)
        form = await request.form()
        try:
            self.require_form(user, form)
        except StaleForm as exc:
            return self.pages.error(request, user, str(exc), 403)
        await run_in_threadpool(self.sessions.end, user.id)
        client = self.oauth.create_client("idhub")
        return await client.logout_redirect(  # type: ignore[no-any-return]
            request,
            post_logout_redirect_uri=self.settings.base_url + "/logged-out",
            id_token_hint=user.id_token,
        )

    async def logged_out(self, request: Request) -> Response:
        request.session.pop(SESSION_KEY, None)
        return self.pages.render(request, "logged_out.html", user=None)

    async def backchannel_logout(self, request: Request) -> Response:
        form = await request.form()
        try:
            event = await run_in_threadpool(
                self.logout_tokens.validate, str(form.get("logout_token", ""))
            )
        except InvalidToken as exc:
            log.warning("refused a logout token: %s", exc)
            return Response(status_code=400, headers={"Cache-Control": "no-store"})
        await run_in_threadpool(lambda: self.sessions.end_for(sid=event.sid, sub=event.sub))
        return Response(status_code=200, headers={"Cache-Control": "no-store"})


def _local(target: str) -> str:
    """Only paths on this system: `next` must never send the browser elsewhere."""
    parts = urlsplit(target)
    # Browsers read `/\host` as `//host`; control characters never belong in a path.
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target)
    ):
        return "/"
    return target

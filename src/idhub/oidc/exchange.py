"""RFC 8693 token exchange as an authlib grant (authlib ships none).

The OA system holds a user's access token (aud `oa`) and calls reimbursement on the user's
behalf: it exchanges that token for one whose `aud` is `reimburse`. The new token keeps the
user's `sub`, carries `act: {"sub": "<calling client>"}` (nesting any earlier `act`), never
outlives the subject token, and gets the roles of the new audience.
"""

from __future__ import annotations

from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin

from idhub.core.audit import EventType
from idhub.core.clients import TOKEN_EXCHANGE, Client
from idhub.oidc.client_auth import CONFIDENTIAL_METHODS
from idhub.oidc.grants import GrantSupport
from idhub.oidc.minter import issued_details, token_body
from idhub.oidc.protocol_errors import InvalidTarget, require_param
from idhub.oidc.tokens import InvalidToken

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105


class TokenExchangeGrant(GrantSupport, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def validate_token_request(self) -> None:
        client_wrapper = self.authenticate_token_endpoint_client()
        client: Client = client_wrapper.client
        if not client.allows_grant(TOKEN_EXCHANGE):
            raise UnauthorizedClientError("the client may not use token exchange")
        self.request.client = client_wrapper
        form = self.request.form
        subject_token = require_param(form, "subject_token")
        subject_type = require_param(form, "subject_token_type")
        if subject_type != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError("subject_token_type must be an access token")
        if form.get("actor_token") or form.get("actor_token_type"):
            raise InvalidRequestError("actor tokens are not supported; the client is the actor")
        requested_type = form.get("requested_token_type")
        if requested_type and requested_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise InvalidRequestError("only access tokens can be requested")
        try:
            subject = self.access_tokens.verify(subject_token)
        except InvalidToken as exc:
            raise InvalidGrantError(f"the subject token is not valid ({exc.reason})") from None
        # The caller must be the system the user's token was issued for (or the client that
        # obtained it): a token meant for someone else cannot be laundered through exchange.
        aud = subject.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if client.audience not in audiences and subject.get("client_id") != client.client_id:
            raise InvalidGrantError("the subject token was not issued to this client")
        self.request.idhub_subject = subject

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        minter = self.minter
        client: Client = self.request.client.client
        subject: dict[str, Any] = self.request.idhub_subject
        form = self.request.form
        target = form.get("resource") or form.get("audience")
        if not target:
            raise InvalidRequestError("name the target system with 'resource' or 'audience'")
        audience = client.resolve_audience(target)
        if audience is None:
            raise InvalidTarget("this client may not obtain tokens for that resource")
        held = str(subject.get("scope", "")).split()
        requested = (self.request.payload.scope or "").split()
        scopes = requested or held
        if not set(scopes) <= set(held):
            raise InvalidScopeError("the exchanged token cannot carry more scope than the subject")
        act: dict[str, Any] = {"sub": client.client_id}
        if isinstance(subject.get("act"), dict):
            act["act"] = subject["act"]
        remaining = int(subject["exp"] - self.clock.now())
        ttl = max(1, min(self.access_tokens.ttl, remaining))
        user = minter.user_by_sub(str(subject["sub"]))
        if user is not None:
            if user.disabled:
                raise InvalidGrantError("the user of the subject token is disabled")
            token, claims = minter.user_access_token(
                client,
                user,
                audience=audience,
                scopes=scopes,
                act=act,
                ttl=ttl,
                auth_time=subject.get("auth_time"),
            )
        else:
            # A service token (client credentials) being passed along: no user, no roles.
            token, claims = minter.service_access_token(
                client,
                sub=str(subject["sub"]),
                audience=audience,
                scopes=scopes,
                extra={"act": act},
                ttl=ttl,
            )
        minter.record_issuance(
            EventType.TOKEN_EXCHANGED,
            client,
            target=str(subject["sub"]),
            ctx=self.audit_ctx,
            details=issued_details(
                self.GRANT_TYPE,
                claims,
                subject_jti=subject["jti"],
                subject_client=subject.get("client_id"),
            ),
        )
        body = token_body(token, claims)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, body, default_json_headers

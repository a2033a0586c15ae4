"""The client-credentials grant (RFC 6749 4.4): what it issues, and a lean path to it.

`issue_service_token` is the grant's work once the client is authenticated: the audience
(RFC 8707 resource), the scopes, the RFC 9068 access token and its `token.issued` event.
authlib's `ClientCredentialsGrant` (oidc/grants.py `ServiceGrant`) and the lean path below
both end in it, so the two cannot drift apart in what they issue or record.

`LeanClientCredentials` answers the common request - `client_secret_basic`, a registered,
enabled client allowed the grant, each parameter once - without authlib's request objects,
grant dispatch and method-by-method client authentication, which together cost about as much
CPU as the ES256 signature (docs/performance.md, OIDC token side). It keeps authlib's order
and answers: the throttle of failed client authentication is read first, a wrong secret is
the same 401 `invalid_client` with `WWW-Authenticate: Basic`, the scope and resource checks
are the grant's own. `plan` takes the lean path only for requests whose every generic-path
decision before client authentication is already known to be "go on"; everything else
(unknown or disabled clients, other authentication methods, repeated parameters, conflicting
credentials, malformed Basic headers) goes the generic way, and `plan` has no effects, so the
generic path sees the request as if the lean one did not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidScopeError

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.client_guard import ClientAuthGuard
from idhub.core.clients import Client, ClientRegistry
from idhub.oidc.client_auth import basic_credentials
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.minter import TokenMinter, issued_details, token_body
from idhub.oidc.protocol_errors import InvalidTarget

GRANT_TYPE = "client_credentials"
# Without a scope the client gets what it is registered for, minus sign-in scopes.
_USER_ONLY = frozenset({"openid", "profile", "email", "phone", "groups", "offline_access"})
# Body fields that mean another client-authentication method (or a conflict with Basic).
_OTHER_METHODS = ("client_secret", "client_assertion", "client_assertion_type")
_JSON_HEADERS = tuple(default_json_headers)
_BASIC = re.compile(r"[Bb][Aa][Ss][Ii][Cc] [A-Za-z0-9+/]+={0,2}")


def sign_service_token(
    minter: TokenMinter,
    client: Client,
    params: Mapping[str, Any],
    ctx: RequestContext | None,
) -> tuple[dict[str, Any], PendingEvent]:
    """The token answer for an authenticated client allowed the grant, and its `token.issued`
    event, which must be committed before the answer may leave."""
    audience = client.resolve_audience(params.get("resource") or params.get("audience"))
    if audience is None:
        raise InvalidTarget("the requested resource is not allowed for this client")
    requested = (params.get("scope") or "").split()
    if requested:
        scopes = client.allowed_scope(requested)
        if len(scopes) != len(set(requested)):
            raise InvalidScopeError("the client may not request some of these scopes")
    else:
        scopes = [s for s in client.scopes if s not in _USER_ONLY]
    token, claims = minter.service_access_token(
        client, sub=client.client_id, audience=audience, scopes=scopes
    )
    event = PendingEvent(
        EventType.TOKEN_ISSUED,
        Actor("client", client.client_id),
        target=client.client_id,
        details=issued_details(GRANT_TYPE, claims),
        ctx=ctx,
    )
    return token_body(token, claims), event


def issue_service_token(
    minter: TokenMinter,
    client: Client,
    params: Mapping[str, Any],
    ctx: RequestContext | None,
) -> dict[str, Any]:
    """`sign_service_token` with its event committed (`TemporarilyUnavailable` otherwise)."""
    body, event = sign_service_token(minter, client, params, ctx)
    minter.record_issuances([event])
    return body


@dataclass(frozen=True)
class LeanRequest:
    """A client-credentials request the lean path may answer (see `LeanClientCredentials`)."""

    data: OAuthRequestData
    client: Client
    secret: str


class LeanClientCredentials:
    """The lean path (module docstring). `sign` notes the authenticated client on the
    request's `LeanOutcome`, so a later failure is recorded against the same actor as the
    generic path would record it."""

    def __init__(
        self,
        *,
        registry: ClientRegistry,
        minter: TokenMinter,
        guard: ClientAuthGuard | None,
    ) -> None:
        self._registry = registry
        self._minter = minter
        self._guard = guard

    def plan(self, data: OAuthRequestData) -> LeanRequest | None:
        """The request for the lean path, or None for the generic one. No effects."""
        params = data.params
        if data.method != "POST" or params.get("grant_type") != GRANT_TYPE:
            return None
        for values in data.multi.values():
            if len(values) > 1:
                return None
        for name in _OTHER_METHODS:
            if name in params:
                return None
        # One `authorization` header spelled as the web layer hands it over, of exactly the
        # form `Basic <base64>`: for it idhub's parse (`credential_problem`, the throttle's
        # claimed id) and authlib's `client_secret_basic` read the same id and secret, so the
        # generic path could not decide anything else before authenticating the client.
        headers = data.headers
        header = headers.get("authorization")
        if header is None or _BASIC.fullmatch(header) is None:
            return None
        if sum(1 for name in headers if name.lower() == "authorization") != 1:
            return None
        credentials = basic_credentials(header)
        if credentials is None or not credentials[1]:
            return None
        client_id, secret = credentials
        named = params.get("client_id")
        if named and named != client_id:
            return None
        client = self._registry.get(client_id)
        if (
            client is None
            or client.token_endpoint_auth_method != "client_secret_basic"  # noqa: S105
            or not client.allows_grant(GRANT_TYPE)
        ):
            return None
        return LeanRequest(data=data, client=client, secret=secret)

    def sign(self, req: LeanRequest, outcome: LeanOutcome) -> tuple[dict[str, Any], PendingEvent]:
        """The answer's body and the event to commit before it leaves; raises the
        `OAuth2Error` the generic path would raise."""
        guard = self._guard
        attempt = guard.begin(req.data.headers, req.data.params, req.data.ctx) if guard else None
        if attempt is not None and attempt.refused:
            raise InvalidClientError(status_code=401, description="too many failed attempts")
        if not self._registry.check_secret(req.client, req.secret):
            if attempt is not None:
                attempt.failed()
            raise InvalidClientError(status_code=401, description="client authentication failed")
        if attempt is not None:
            attempt.succeeded()
        outcome.client_id = req.client.client_id
        return sign_service_token(self._minter, req.client, req.data.params, req.data.ctx)

    @staticmethod
    def answer(body: dict[str, Any]) -> OAuthResponseData:
        """The 200 answer once the body's event is committed."""
        return OAuthResponseData(200, list(_JSON_HEADERS), body)


class LeanOutcome:
    """Which client the lean path authenticated (None until it has)."""

    __slots__ = ("client_id",)

    def __init__(self) -> None:
        self.client_id: str | None = None

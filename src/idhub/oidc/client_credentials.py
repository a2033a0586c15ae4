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

from collections.abc import Mapping
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import InvalidScopeError

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.client_guard import ClientAuthGuard, ThrottleBatch
from idhub.core.clients import Client, ClientRegistry
from idhub.oidc.basic_only import BasicOnly, plan_basic_only, require_basic_client
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.minter import TokenMinter, issued_details, token_body
from idhub.oidc.protocol_errors import InvalidTarget

GRANT_TYPE = "client_credentials"
# Without a scope the client gets what it is registered for, minus sign-in scopes.
_USER_ONLY = frozenset({"openid", "profile", "email", "phone", "groups", "offline_access"})
_JSON_HEADERS = tuple(default_json_headers)


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

    def plan(self, data: OAuthRequestData) -> BasicOnly | None:
        """The request for the lean path, or None for the generic one. No effects."""
        if data.params.get("grant_type") != GRANT_TYPE:
            return None
        req = plan_basic_only(data, self._registry)
        return req if req is not None and req.client.allows_grant(GRANT_TYPE) else None

    def sign(
        self, req: BasicOnly, outcome: LeanOutcome, *, batch: ThrottleBatch | None = None
    ) -> tuple[dict[str, Any], PendingEvent]:
        """The answer's body and the event to commit before it leaves; raises the
        `OAuth2Error` the generic path would raise. `batch`: the throttle read shared by the
        requests decided together (core/client_guard.py `ThrottleBatch`)."""
        client = require_basic_client(req, self._registry, self._guard, batch=batch)
        outcome.client_id = client.client_id
        return sign_service_token(self._minter, client, req.data.params, req.data.ctx)

    @staticmethod
    def answer(body: dict[str, Any]) -> OAuthResponseData:
        """The 200 answer once the body's event is committed."""
        return OAuthResponseData(200, list(_JSON_HEADERS), body)


class LeanOutcome:
    """Which client the lean path authenticated (None until it has)."""

    __slots__ = ("client_id",)

    def __init__(self) -> None:
        self.client_id: str | None = None

"""A lean path to introspection (RFC 7662) for the common request.

A resource server introspecting a token sends `token` (perhaps `token_type_hint`) with its
`client_secret_basic` header. The generic path (`Provider.introspect`) wraps that in
authlib's `OAuth2Request` and runs authlib's method-by-method client authentication before
idhub's own examination of the token; in process that plumbing was about a fifth of an
introspection's CPU. `LeanIntrospection.introspect` answers the request `plan_basic_only`
(oidc/basic_only.py) recognises itself: the same throttle read, the same secret check, then
the same `TokenEndpoints.introspect_for` the generic path ends in, so the token checks, the
`{"active": false}` answers and the `token.introspected_inactive` event cannot drift apart.
Everything else (other methods, unknown clients, repeated parameters, malformed headers) goes
to the generic path unchanged. The errors map as the generic path maps them: protocol errors
as the RFC says, an audit trail that cannot be written 503, the database away 503.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error

from idhub.core.client_guard import ClientAuthGuard
from idhub.core.clients import ClientRegistry
from idhub.errors import AuditError, StorageError
from idhub.oidc.basic_only import plan_basic_only, require_basic_client
from idhub.oidc.introspection import TokenEndpoints
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.outage_answers import database_down, error_answer, unavailable
from idhub.oidc.server import Provider

# The generic path refuses a malformed `grant_type` even here (`_require_well_formed`);
# a request carrying one at all is rare enough to leave it that path.
_REFUSE = ("grant_type",)


class LeanIntrospection:
    """`services.introspection` (module docstring)."""

    def __init__(
        self,
        *,
        provider: Provider,
        endpoints: TokenEndpoints,
        registry: ClientRegistry,
        guard: ClientAuthGuard | None,
    ) -> None:
        self._provider = provider
        self._endpoints = endpoints
        self._registry = registry
        self._guard = guard
        # False sends every request the generic way (the side-by-side tests compare both).
        self.enabled = True

    def introspect(self, data: OAuthRequestData) -> OAuthResponseData:
        try:
            planned = plan_basic_only(data, self._registry, refuse=_REFUSE)
            if planned is None or not self.enabled:
                return self._provider.introspect(data)
            client = require_basic_client(planned, self._registry, self._guard)
            return self._endpoints.introspect_for(data, client)
        except OAuth2Error as exc:
            return error_answer(exc)
        except AuditError:
            return unavailable()
        except StorageError as exc:
            return database_down(exc, "introspection")

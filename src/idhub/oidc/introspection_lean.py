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

One read instead of two: an introspection read the client's throttle counters and then,
after the secret, the token's revocation, each its own database read (on PostgreSQL a pool
checkout and a round trip each). The token is verified offline first (pure CPU on the token,
`TokenEndpoints.offline_claims`), so its `jti` is known when the throttle reads, and one
statement answers both (`joint_read`). The order of the decisions is unchanged: a throttled
client is refused before its secret is checked, with the same answer and event (it learns
nothing of the token, whose claims are only kept for the answer), a wrong secret is the same
401, and only then is the token examined, the revocation read used as the probe's would be.
A token that fails the offline check, or names none, takes the two reads as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from authlib.oauth2.rfc6749 import OAuth2Error

from idhub.core.client_guard import ClientAuthGuard
from idhub.core.clients import ClientRegistry
from idhub.core.throttle import Counter, ThrottleKey
from idhub.errors import AuditError, StorageError
from idhub.oidc.basic_only import plan_basic_only, require_basic_client
from idhub.oidc.introspection import TokenEndpoints
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.outage_answers import database_down, error_answer, unavailable
from idhub.oidc.server import Provider

# The generic path refuses a malformed `grant_type` even here (`_require_well_formed`);
# a request carrying one at all is rare enough to leave it that path.
_REFUSE = ("grant_type",)


# The throttle counters of some keys and whether a `jti` is revoked, in one read
# (adapters/throttle_store.py `SqlThrottleStore.counters_and_revoked`).
JointRead = Callable[[Sequence[ThrottleKey], str], tuple[Sequence[Counter], bool]]


class LeanIntrospection:
    """`services.introspection` (module docstring)."""

    def __init__(
        self,
        *,
        provider: Provider,
        endpoints: TokenEndpoints,
        registry: ClientRegistry,
        guard: ClientAuthGuard | None,
        joint_read: JointRead | None = None,
    ) -> None:
        self._provider = provider
        self._joint_read = joint_read
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
            claims = self._endpoints.offline_claims(data)
            joint = self._joint_read
            if claims is None or joint is None or self._guard is None:
                client = require_basic_client(planned, self._registry, self._guard)
                return self._endpoints.introspect_for(data, client)
            # The token's revocation is read in the throttle's query (module docstring).
            jti = str(claims["jti"])
            revoked: list[bool] = []

            def read(keys: tuple[ThrottleKey, ...]) -> Sequence[Counter]:
                counters, found = joint(keys, jti)
                revoked.append(found)
                return counters

            client = require_basic_client(planned, self._registry, self._guard, read=read)
            if not revoked:  # the throttle read elsewhere (it never does today)
                return self._endpoints.introspect_for(data, client)
            return self._endpoints.introspect_for(data, client, known=(claims, revoked[0]))
        except OAuth2Error as exc:
            return error_answer(exc)
        except AuditError:
            return unavailable()
        except StorageError as exc:
            return database_down(exc, "introspection")

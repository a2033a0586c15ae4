"""Requests whose only client authentication is a plain `client_secret_basic` header.

For such a request every decision the generic path (authlib's `authenticate_client` behind
idhub's `credential_problem` and the throttle) takes before it checks the secret is known to
be "go on", so a lean path may check the secret itself and give the same answers:
`plan_basic_only` recognises the request and has no effects (a request it does not take goes
the generic way exactly as if no lean path existed); `require_basic_client` then does what
the generic path does with it, in the same order: the throttle first (`too many failed
attempts`), then the secret (a failure is counted and is the same 401 `invalid_client`, with
`WWW-Authenticate: Basic`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import InvalidClientError

from idhub.core.client_guard import ClientAuthGuard, CounterRead, ThrottleBatch
from idhub.core.clients import Client, ClientRegistry
from idhub.oidc.messages import OAuthRequestData

# Body fields that mean another client-authentication method (or a conflict with Basic).
OTHER_METHODS = ("client_secret", "client_assertion", "client_assertion_type")
_BASIC = re.compile(r"[Bb][Aa][Ss][Ii][Cc] [A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True, init=False)
class BasicOnly:
    """A request `plan_basic_only` took: the registered client it names and the secret."""

    data: OAuthRequestData
    client: Client
    secret: str
    # The client id as the header spells it (decoded): the id the throttle counts under.
    client_id: str

    # One per lean request, on the token batch's thread: the fields go straight into the new
    # object's `__dict__` (the frozen dataclass's own `__init__`, an `object.__setattr__` per
    # field, cost ~9,300 instructions), as oidc/messages.py's request shape does. Equality,
    # repr and the refusal of later assignment stay the dataclass's.
    def __init__(self, data: OAuthRequestData, client: Client, secret: str, client_id: str) -> None:
        fields = self.__dict__
        fields["data"] = data
        fields["client"] = client
        fields["secret"] = secret
        fields["client_id"] = client_id


def plan_basic_only(
    data: OAuthRequestData, registry: ClientRegistry, *, refuse: Iterable[str] = ()
) -> BasicOnly | None:
    """The request, if it is a POST giving each parameter once, none of `refuse` nor of
    `OTHER_METHODS`, and one `Authorization: Basic <base64>` naming an enabled client
    registered for `client_secret_basic`; None otherwise. No effects."""
    params = data.params
    if data.method != "POST":
        return None
    for values in data.multi.values():
        if len(values) > 1:
            return None
    names = params.keys()
    if not names.isdisjoint(OTHER_METHODS) or not names.isdisjoint(refuse):
        return None
    # One `authorization` header spelled as the web layer hands it over, of exactly the form
    # `Basic <base64>`: for it idhub's parse (`credential_problem`, the throttle's claimed id)
    # and authlib's `client_secret_basic` read the same id and secret.
    headers = data.headers
    header = headers.get("authorization")
    if header is None or _BASIC.fullmatch(header) is None:
        return None
    if list(map(str.lower, headers)).count("authorization") != 1:
        return None
    credentials = data.basic_credentials  # of this header: the one `authorization` there is
    if credentials is None or not credentials[1]:
        return None
    client_id, secret = credentials
    named = params.get("client_id")
    if named and named != client_id:
        return None
    client = registry.get(client_id)
    if client is None or client.token_endpoint_auth_method != "client_secret_basic":  # noqa: S105
        return None
    return BasicOnly(data, client, secret, client_id)


def require_basic_client(
    req: BasicOnly,
    registry: ClientRegistry,
    guard: ClientAuthGuard | None,
    *,
    batch: ThrottleBatch | None = None,
    read: CounterRead | None = None,
) -> Client:
    """The client, once the throttle let the attempt through and the secret is right; raises
    the `InvalidClientError` the generic path raises otherwise (the attempt counted). With
    `batch`, the throttle's read is shared with the batch's other attempts (`ThrottleBatch`);
    with `read`, the counters come from it (`ClientAuthGuard.begin_claimed`).

    The throttle counts under the id the header claims, which is what `ClientAuthGuard.begin`
    would decode from it (the Basic user name): taken from the request's one decode."""
    attempt = (
        guard.begin_claimed(req.client_id, req.data.ctx, batch=batch, read=read)
        if guard is not None
        else None
    )
    if attempt is not None and attempt.refused:
        raise InvalidClientError(status_code=401, description="too many failed attempts")
    if not registry.check_secret(req.client, req.secret):
        if attempt is not None:
            attempt.failed()
        raise InvalidClientError(status_code=401, description="client authentication failed")
    if attempt is not None:
        attempt.succeeded()
    return req.client

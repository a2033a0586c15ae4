"""OpenID Connect RP-Initiated Logout 1.0: what an end-session request may do.

`plan_end_session` checks the request (the `id_token_hint`, `client_id` against the hint's
audience, the registered `post_logout_redirect_uri`) and says which session ends and whether the
person must confirm first. Ending the session, and notifying every system that took part in it,
is the sign-in core's (`core/signin.py` -> `core/logout.py`), the same for every front.

A valid hint for the browser's own session (same `sid`, or the same person) ends it at once;
without one a page asks the person first, so a link on some web page cannot log people out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.core.clients import Client
from idhub.core.signin import SignedIn

PARAMS = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id", "ui_locales")
MAX_PARAM = 8000


class HintDecoder(Protocol):
    def decode_id_token_hint(self, hint: str) -> dict[str, Any] | None: ...


class ClientLookup(Protocol):
    def get(self, client_id: str) -> Client | None: ...


class EndSessionError(Exception):
    """The request cannot be honoured: show an error page (never redirect anywhere)."""

    def __init__(self, code: str, message_key: str) -> None:
        super().__init__(code)
        self.code = code
        self.message_key = message_key


@dataclass(frozen=True)
class EndSessionPlan:
    client: Client | None
    redirect_to: str | None
    state: str | None
    # The person must confirm on a page before their session ends.
    confirm: bool
    # Why the session ends, for the audit trail.
    reason: str


def hint_audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def plan_end_session(
    params: Mapping[str, str],
    *,
    current: SignedIn | None,
    confirmed: bool,
    hints: HintDecoder,
    clients: ClientLookup,
) -> EndSessionPlan:
    """Raises `EndSessionError` for a request that must not be followed."""
    if any(len(v) > MAX_PARAM for v in params.values()):
        raise EndSessionError("invalid_request", "bad_request")
    hint = params.get("id_token_hint") or None
    claims = hints.decode_id_token_hint(hint) if hint else None
    client_id = params.get("client_id") or None
    if claims is not None:
        audiences = hint_audiences(claims)
        if client_id is not None and client_id not in audiences:
            # RP-Initiated Logout §2: client_id must match the hint's audience.
            raise EndSessionError("invalid_request", "bad_request")
        client_id = client_id or (audiences[0] if audiences else None)
    client = clients.get(client_id) if client_id else None
    if client_id and client is None:
        raise EndSessionError("invalid_client", "unknown_client")
    target = params.get("post_logout_redirect_uri") or None
    if target is not None and not (client and client.allows_post_logout_redirect_uri(target)):
        raise EndSessionError("invalid_request", "bad_post_logout_uri")
    hint_matches = claims is not None and (
        current is None
        or claims.get("sid") == current.session.sid
        or claims.get("sub") == current.user.sub
    )
    return EndSessionPlan(
        client=client,
        redirect_to=target,
        state=params.get("state") or None,
        confirm=current is not None and not (confirmed or hint_matches),
        reason="rp_initiated" if claims is not None else "user_logout",
    )

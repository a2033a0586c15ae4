"""Reserving budget (预算预占) in the reimbursement system on the approver's behalf.

OA never holds a shared secret with reimbursement: it exchanges the approver's own access token
(aud `oa`) at idhub for one addressed to `reimburse` (RFC 8693). The new token still names the
approver as `sub`, and says `act: {"sub": "oa"}`, so reimbursement decides about the approver
and knows OA carried the call.
"""

from __future__ import annotations

from typing import Any

import httpx

from examples.shared.settings import SystemSettings

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


class BudgetError(Exception):
    """Reimbursement did not reserve the budget; `str()` is a sentence for the page."""


class BudgetClient:
    def __init__(self, settings: SystemSettings, *, http: httpx.Client | None = None) -> None:
        self._settings = settings
        self._http = http or httpx.Client(timeout=10.0)

    def exchange(self, user_access_token: str) -> str:
        """An access token for `reimburse` carrying the same person, with OA as the actor."""
        try:
            response = self._http.post(
                self._settings.issuer + "/token",
                data={
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": user_access_token,
                    "subject_token_type": ACCESS_TOKEN,
                    "resource": "reimburse",
                },
                auth=(self._settings.client_id, self._settings.client_secret),
            )
        except httpx.HTTPError as exc:
            raise BudgetError(f"idhub is unreachable: {exc}") from exc
        if response.status_code != 200:
            raise BudgetError(f"idhub refused the token exchange: {_error_of(response)}")
        return str(response.json()["access_token"])

    def reserve(self, user_access_token: str, request: dict[str, Any]) -> int:
        """Reserves `request`'s amount; the reservation's id in reimbursement."""
        token = self.exchange(user_access_token)
        try:
            response = self._http.post(
                self._settings.peer_url + "/api/budget-reservations",
                json=request,
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            raise BudgetError(f"the reimbursement system is unreachable: {exc}") from exc
        if response.status_code != 201:
            raise BudgetError(f"reimbursement did not reserve the budget: {_error_of(response)}")
        return int(response.json()["id"])


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error')}: {body.get('error_description') or body.get('reason', '')}"
    except ValueError:
        return f"HTTP {response.status_code}"

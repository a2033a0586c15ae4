"""What the OA, reimbursement, ERP and archive systems import to trust idhub.

Depends only on httpx and cryptography, never on the server (`pip install "idhub[sdk]"`; a
system can also vendor this package). docs/sdk.md shows each part in use.

- `TokenValidator`: validates idhub access tokens offline (RFC 9068) against the JWKS, with
  optional `Introspection` for instant revocation; every refusal is a subclass of
  `InvalidToken` (`idhub.sdk.errors`).
- `PdpClient`: asks the decision API "may U do A on R?" (`check`, `check_many`) and "which
  rows may U see?" (`scopes` -> `DataScope.sql_where`), naming U by token claims, `Subject`
  or username.
- `LogoutTokenValidator`, `BackchannelLogoutReceiver`: back-channel logout (OIDC Back-Channel
  Logout 1.0) calling the system's hook.
- `idhub.sdk.bearer`: plain functions for Flask, Django or any WSGI system;
  `idhub.sdk.starlette`: ASGI middleware and a logout endpoint.
"""

from idhub.sdk.data_scope import DataScope, DepartmentScope
from idhub.sdk.errors import InvalidToken, VerifierUnavailable
from idhub.sdk.introspection import Introspection
from idhub.sdk.logout import BackchannelLogoutReceiver, LogoutEvent, LogoutTokenValidator
from idhub.sdk.pdp import Decision, PdpClient, PdpError
from idhub.sdk.replies import Reply
from idhub.sdk.subjects import Subject
from idhub.sdk.tokens import TokenValidator

__all__ = [
    "BackchannelLogoutReceiver",
    "DataScope",
    "Decision",
    "DepartmentScope",
    "Introspection",
    "InvalidToken",
    "LogoutEvent",
    "LogoutTokenValidator",
    "PdpClient",
    "PdpError",
    "Reply",
    "Subject",
    "TokenValidator",
    "VerifierUnavailable",
]

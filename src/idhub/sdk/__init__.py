"""What the OA, reimbursement, ERP and archive systems import to trust idhub.

Depends only on httpx and joserfc, never on the server: a system can vendor this package.

- `TokenValidator`: validates idhub access tokens offline (RFC 9068) against the JWKS.
- `LogoutTokenValidator`: validates back-channel logout tokens (OIDC Back-Channel Logout 1.0).
- `PdpClient`: asks the decision API "may U do A on R?" and "which rows may U see?".
- `idhub.sdk.starlette.BearerAuthMiddleware`: the validator as ASGI middleware.
"""

from idhub.sdk.logout import LogoutEvent, LogoutTokenValidator
from idhub.sdk.pdp import DataScope, Decision, PdpClient, PdpError, Subject
from idhub.sdk.tokens import InvalidToken, TokenValidator

__all__ = [
    "DataScope",
    "Decision",
    "InvalidToken",
    "LogoutEvent",
    "LogoutTokenValidator",
    "PdpClient",
    "PdpError",
    "Subject",
    "TokenValidator",
]

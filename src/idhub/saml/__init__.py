"""The SAML 2.0 identity provider front (framework-free, like `idhub.oidc`).

- `metadata`: what an SP's metadata says (entity id, ACS and SLO endpoints, certificates);
- `registry`: the registered service providers, each tied to a policy domain;
- `keys`: the signing key (idhub's RS256 key) wrapped in a published certificate;
- `attributes`: the NameID and attributes released to an SP;
- `requests`: AuthnRequest / LogoutRequest parsing and every check made on them;
- `idp`: responses, assertions, logout messages and the IdP metadata, built with pysaml2;
- `logout`: telling SAML SPs that a session ended (LogoutRequest over SOAP, retried).

See docs/saml.md.
"""

from __future__ import annotations

import logging
import warnings

# pysaml2 names cryptography's CFB mode when it is imported, and its schema library announces
# every schema it loads at INFO: neither says anything to an admin reading `idhub serve`.
warnings.filterwarnings("ignore", message="CFB has been moved")
logging.getLogger("xmlschema").setLevel(logging.WARNING)

"""How idhub fits pysaml2: the URI attribute names, the SessionIndex it writes, and what it
must not keep in memory. Kept apart so `idp.py` reads as the IdP's own rules."""

from __future__ import annotations

import contextvars
from typing import Any

import saml2.assertion
from saml2.attribute_converter import AttributeConverter
from saml2.samlp import Status, StatusCode

from idhub.saml.attributes import ATTRIBUTE_URIS, NAME_FORMAT_URI

# pysaml2 gives every AuthnStatement a random SessionIndex; idhub's is derived from the SSO
# session, so the LogoutRequest sent when that session ends can name it without storing it. The
# value is handed over through a context variable (per thread), so concurrent responses never mix.
SESSION_INDEX: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "saml_session_index", default=None
)
_random_sid = saml2.assertion.sid


def _session_index() -> str:
    chosen = SESSION_INDEX.get()
    return chosen if chosen is not None else str(_random_sid())


saml2.assertion.sid = _session_index


def attribute_converter() -> AttributeConverter:
    converter = AttributeConverter(NAME_FORMAT_URI)
    converter.from_dict(
        {
            "identifier": NAME_FORMAT_URI,
            "fro": {uri: name for name, uri in ATTRIBUTE_URIS.items()},
            "to": dict(ATTRIBUTE_URIS),
        }
    )
    return converter


class NoAssertionStore:
    """pysaml2 keeps every issued assertion in process memory for AssertionIDRequest / AuthnQuery,
    which idhub does not offer: a long-running server would only grow. Nothing is kept."""

    def store_assertion(self, assertion: Any, to_sign: Any) -> None:
        return None


def status_of(code: str) -> Any:
    return Status(status_code=StatusCode(value=code))


def assertion_id_in(xml: str) -> str:
    marker = xml.find("Assertion ")
    start = xml.find('ID="', marker)
    end = xml.find('"', start + 4)
    return xml[start + 4 : end] if marker >= 0 and start >= 0 and end > start else ""

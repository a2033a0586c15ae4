"""How idhub fits pysaml2 (which parses requests and builds logout messages): the URI attribute
names, and what it must not keep in memory. Kept apart so `idp.py` reads as the IdP's own
rules."""

from __future__ import annotations

from typing import Any

from saml2.attribute_converter import AttributeConverter
from saml2.samlp import Status, StatusCode

from idhub.saml.attributes import ATTRIBUTE_URIS, NAME_FORMAT_URI


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

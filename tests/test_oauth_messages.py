"""`OAuthRequestData` and `OAuthResponseData` (oidc/messages.py) write their fields without a
frozen dataclass's `object.__setattr__` calls, and stay what such a dataclass is: the same
fields and defaults (a fresh mapping or list each), equality, `dataclasses.replace`, and no
assignment or deletion afterwards."""

from __future__ import annotations

import dataclasses

import pytest

from idhub.oidc.client_auth import basic_credentials
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData, encode_json
from tests.oidc_support import basic_header


def test_request_data_fields_defaults_and_equality() -> None:
    bare = OAuthRequestData("GET", "http://idhub/authorize")
    assert (bare.method, bare.uri, bare.headers, bare.params, bare.multi, bare.ctx) == (
        "GET",
        "http://idhub/authorize",
        {},
        {},
        {},
        None,
    )
    other = OAuthRequestData(method="GET", uri="http://idhub/authorize")
    assert bare == other and bare.headers is not other.headers  # a fresh default each
    assert [f.name for f in dataclasses.fields(bare)] == [
        "method",
        "uri",
        "headers",
        "params",
        "multi",
        "ctx",
    ]
    full = OAuthRequestData("POST", "u", {"a": "b"}, {"token": "t"}, {"token": ["t"]})
    assert full.params == {"token": "t"} and full.multi == {"token": ["t"]}
    assert dataclasses.replace(full, method="PUT") == OAuthRequestData(
        "PUT", "u", {"a": "b"}, {"token": "t"}, {"token": ["t"]}
    )
    assert full != bare


def test_request_data_is_frozen_and_still_caches_its_credentials() -> None:
    header = basic_header("rs", "s3cret")
    data = OAuthRequestData("POST", "u", headers={"authorization": header})
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.method = "GET"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del data.uri
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.extra = 1  # type: ignore[attr-defined]
    assert data.basic_credentials == basic_credentials(header) == ("rs", "s3cret")
    assert data.basic_credentials is data.basic_credentials  # decoded once


def test_response_data_fields_defaults_and_equality() -> None:
    plain = OAuthResponseData(302)
    assert (plain.status, plain.headers, plain.body, plain.encoded) == (302, [], "", None)
    assert plain.headers is not OAuthResponseData(302).headers
    body = {"active": True, "scope": "authz"}
    encoded = encode_json(body)
    kept = OAuthResponseData(200, [("Cache-Control", "no-store")], body, encoded)
    fresh = OAuthResponseData(status=200, headers=[("Cache-Control", "no-store")], body=body)
    assert kept == fresh  # the encoding is no part of the answer's identity
    assert kept.json_bytes() == fresh.json_bytes() == b'{"active":true,"scope":"authz"}'
    assert "encoded" not in repr(kept)
    assert dataclasses.replace(kept, status=201).status == 201
    with pytest.raises(dataclasses.FrozenInstanceError):
        kept.status = 500  # type: ignore[misc]
    assert OAuthResponseData(200, [], "text").json_bytes() == b"text"

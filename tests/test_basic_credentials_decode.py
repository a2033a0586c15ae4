"""oidc/client_auth.py `basic_credentials`: what RFC 6749 2.3.1's Basic header yields, the
same as decoding it with `base64.b64decode(validate=True)` and two `unquote`s."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

import pytest

from idhub.oidc.client_auth import basic_credentials


def reference(header: str) -> tuple[str, str] | None:
    _, _, credentials = header.strip().partition(" ")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    client_id = unquote(client_id)
    if not colon or not client_id or "\x00" in client_id:
        return None
    return client_id, unquote(secret)


def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


HEADERS = [
    basic(b"bench-es:s3cr3t-value_XYZ"),
    basic(b"a%3Ab:c%25d"),
    basic(b"id%00x:secret"),
    basic(b"id:sec%00ret"),
    basic(b"id:a+b%20c"),
    basic(b"id:%ZZ%"),
    basic(b"%C3%A9t%C3%A9:%FF"),
    basic("été:ключ".encode()),
    basic(b"\xff\xfe:x"),
    basic(b"nocolon"),
    basic(b":secret"),
    basic(b"%:x"),
    basic(b"id:"),
    basic(b"id::x:y"),
    "Basic",
    "Basic ",
    "Basic YWJj",
    "Basic YWJjOmRlZg",
    "Basic YWJjOmRlZg==",
    "Basic YWJjOmRlZg===",
    "Basic YWJj OmRlZg==",
    "Basic YWJjOmRlZg==\n",
    "  Basic   YWJjOmRlZg==  ",
    "Basic YWJjOm-_Zg==",
    "Basic YWJjOmRlZgé=",
    "Basic " + "\u0660" * 8,
    "Bearer YWJjOmRlZg==",
]


@pytest.mark.parametrize("header", HEADERS)
def test_the_credentials_are_the_reference_decode(header: str) -> None:
    assert basic_credentials(header) == reference(header)


def test_the_usual_header_is_decoded() -> None:
    assert basic_credentials(basic(b"bench-es:a%2Fb")) == ("bench-es", "a/b")
    assert basic_credentials(basic(b"id%00x:secret")) is None

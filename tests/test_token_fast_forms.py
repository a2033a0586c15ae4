"""The fast forms on the client-credentials path give exactly what the generic forms give.

- An access token's header and claims built from pre-encoded constant parts
  (oidc/tokens.py `AccessTokens._prefix`) are byte-for-byte what `jws.sign` makes of the
  same header and claims, for every length of the constant part modulo 3 (the cut that lets
  its base64url be computed once), for text that JSON must escape, and verify with joserfc.
- An audit event's details encoded by the flat encoder (core/audit_chain.py
  `canonical_flat_details`) are the text of `canonical_details`, errors included, and a
  chain of such events, written through `Provider.token_many` batches, verifies with
  `idhub audit verify`.
- The keyed hash from a once-keyed HMAC copied per value equals `hmac.new` per value.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.config import Settings, load_settings
from idhub.core.audit import scrub_details, scrub_flat
from idhub.core.audit_chain import canonical_details, canonical_flat_details
from idhub.core.clock import FrozenClock
from idhub.core.crypto import KeyedHasher
from idhub.core.secret import Secret
from idhub.oidc import jws
from idhub.oidc.tokens import ACCESS_TOKEN_TYP, AccessTokens, new_jti
from tests.oidc_support import basic_header, prepare, raw_form_request

REPO = Path(__file__).resolve().parents[1]
KEY = "test-secret-key-0123456789abcdefghijklmnop"


def _generic_signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The first two parts of a compact JWS as RFC 7515 spells them, encoded independently."""

    def part(value: dict[str, Any]) -> str:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return base64.urlsafe_b64encode(text).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}"


@pytest.fixture
def services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    made = make_services(make_settings(db_url), clock=FrozenClock(1_800_000_000.0))
    prepare(made)
    return made


# Issuers, subjects and audiences of every length modulo 3 around the cut, and text JSON
# must escape: quotes, backslashes, control characters, non-ASCII, a slash.
NAMES = [
    ("https://idhub.example", "svc", "reimburse"),
    ("https://idhub.example/", "svc-a", "reimburse"),
    ("https://idhub.example/x", "svc-ab", "oa"),
    ("http://127.0.0.1:8000", 'quo"te\\back', "aud\nnewline\t"),
    ("https://身份.example/租户", "系统-α", "报销"),
    ("https://e.example", "x" * 97, "y" * 131),
]


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_access_token_fast_form_is_the_generic_form(services: Services, alg: str) -> None:
    jwks = KeySet.import_key_set(services.keys.jwks())
    for issuer, sub, aud in NAMES:
        client = services.clients.get(_client(services, sub, alg))
        assert client is not None
        tokens = AccessTokens(
            services.keys, services.revocations, issuer=issuer, clock=services.clock, ttl=900
        )
        for scopes in ([], ["authz"], ["authz", 'odd"scope', "范围"]):
            for _ in range(2):  # the second from the remembered prefix
                token, claims = tokens.issue(client, sub=sub, audience=aud, scopes=scopes)
                header, parsed, _, _ = jws.parse(token)
                assert parsed == claims
                assert list(parsed) == ["iss", "sub", "aud", "client_id", "iat", "exp", "jti",
                                        "scope"]  # fmt: skip
                assert header == {"typ": ACCESS_TOKEN_TYP, "alg": alg, "kid": header["kid"]}
                generic = jws.sign(header, claims, services.keys.signer(alg)[1])
                assert token.rsplit(".", 1)[0] == generic.rsplit(".", 1)[0]
                assert token.rsplit(".", 1)[0] == _generic_signing_input(header, claims)
                assert tokens.verify_offline(token, audience=aud) == claims
                if alg != "EdDSA":  # joserfc warns that RFC 9864 deprecates the name
                    decoded = jwt.decode(token, jwks, algorithms=[alg])
                    assert decoded.claims == claims and decoded.header == header
        assert len(tokens._prefixes) == 1  # the fast form was taken, its prefix remembered


def test_access_tokens_with_extra_claims_take_the_generic_form(services: Services) -> None:
    client = services.clients.get(_client(services, "svc-extra", "ES256"))
    assert client is not None
    token, claims = services.access_tokens.issue(
        client, sub="u-1", audience="oa", scopes=["authz"], extra={"roles": ["a", "b"]}
    )
    header, parsed, _, _ = jws.parse(token)
    assert parsed == claims and claims["roles"] == ["a", "b"]
    assert token.rsplit(".", 1)[0] == _generic_signing_input(header, claims)


def test_jti_is_22_url_safe_characters_of_16_random_bytes() -> None:
    seen = {new_jti() for _ in range(2_000)}
    assert len(seen) == 2_000
    for jti in seen:
        assert len(jti) == 22
        raw = base64.urlsafe_b64decode(jti + "==")
        assert len(raw) == 16 and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == jti


DETAILS: list[dict[Any, Any]] = [
    {},
    {"grant_type": "client_credentials", "client_id": "c", "audience": "a", "jti": "j"},
    {"z": 'ü"\\\n\x00\u2028', "a": None, "n": -3, "f": 1.5, "t": True, "b": False},
    {"when": datetime.date(2026, 12, 2), "big": 10**30, "e": 1e-9},
    {1: "int key", 2.5: "float key", 0: "zero"},
    {"scope": "eyJhbGciOi.eyJzdWIiOi.sig"},  # redacted, then not flat
    {"password": "hunter2", "x": "y"},
    {"nested": {"a": [1, 2]}, "list": ["eyJabcd.eyJabcd.x"]},
]


@pytest.mark.parametrize("details", DETAILS)
def test_flat_details_text_is_the_canonical_text(details: dict[Any, Any]) -> None:
    scrubbed, flat = scrub_flat(details)
    assert scrubbed == scrub_details(details)
    assert canonical_details(scrubbed) == canonical_details(scrub_details(details))
    if flat:
        assert not any(isinstance(v, dict | list) for v in scrubbed.values())
        assert canonical_flat_details(scrubbed) == canonical_details(scrubbed)
    else:
        assert any(isinstance(v, dict | list) for v in scrubbed.values())


@pytest.mark.parametrize(
    "bad", [{"x": float("nan")}, {"x": float("inf")}, {(1, 2): "tuple key"}, {1: "a", "b": 2}]
)
def test_flat_details_fail_as_the_canonical_text_fails(bad: dict[Any, Any]) -> None:
    with pytest.raises((TypeError, ValueError)) as generic:
        canonical_details(bad)
    with pytest.raises(generic.type) as fast:
        canonical_flat_details(bad)
    assert str(fast.value) == str(generic.value)


def test_keyed_hash_is_the_hmac_of_the_value() -> None:
    hasher = KeyedHasher(Secret(KEY), "client-secret")
    key = hasher._key
    values = ["", "s", "secret-" * 20, "密码", "a\x00b"]
    for value in values:
        expected = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
        assert hasher.hash(value) == expected
        assert hasher.check(value, expected)
        assert not hasher.check(value + "x", expected)
        assert not hasher.check(value, None)
    # The keyed HMAC is shared: threads hashing at once each get their own value's digest.
    wrong: list[str] = []

    def work(n: int) -> None:
        for i in range(300):
            value = f"{n}-{i}"
            if hasher.hash(value) != hmac.new(key, value.encode(), hashlib.sha256).hexdigest():
                wrong.append(value)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_batched_tokens_events_verify_with_the_cli(
    tmp_path: Path, db_url: str, make_services: Callable[..., Services], run_cli: Any
) -> None:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(KEY + "\n", encoding="utf-8")
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    services = make_services(load_settings(config, env={}))
    prepare(services)
    _, secret = services.clients.register(
        "batch-cc", grant_types=["client_credentials"], scope="authz",
        allowed_audiences=["reimburse"],
    )  # fmt: skip
    assert secret
    auth = {"authorization": basic_header("batch-cc", secret)}
    form = [("grant_type", "client_credentials"), ("scope", "authz")]
    for n in range(5):
        batch = [
            raw_form_request("/token", form, f"10.7.0.{n}", headers=auth),
            raw_form_request("/token", [*form[:1], ("resource", "reimburse")], "10.7.0.9",
                             headers=auth),
        ] * 4  # fmt: skip
        answers = services.oidc.token_many(batch)
        assert [a.status for a in answers] == [200] * 8
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events.c.details).where(audit_events.c.event_type == "token.issued")
        ).all()
    assert len(rows) == 40
    for (text,) in rows:
        details = json.loads(text)
        assert text == canonical_details(details)  # stored as the canonical text
        assert details["grant_type"] == "client_credentials"
    result = run_cli("audit", "verify", config=config)
    assert result.code == 0, result.out + result.err
    assert "live chain OK" in result.out


def _client(services: Services, sub: str, alg: str) -> str:
    client_id = f"fast-{alg}-{hashlib.sha256(sub.encode()).hexdigest()[:8]}"
    if services.clients.get(client_id) is None:
        services.clients.register(
            client_id, grant_types=["client_credentials"], scope="authz", access_token_alg=alg
        )
    return client_id

"""`TokenValidator` against a real idhub (its discovery, JWKS and introspection over HTTP):
one `InvalidToken` subclass per failure, the algorithm allow-list bound to the key, leeway,
the bounded cache honouring `exp`, the rate-limited JWKS refresh, instant revocation by
introspection. Tokens idhub would never issue are signed with idhub's own active keys, so
only the claim or header under test is wrong."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from idhub.oidc.jws import sign
from idhub.sdk import Introspection, TokenValidator
from idhub.sdk import errors as e
from tests.conftest import LiveServer, free_port, serve_asgi

AUD = "reimburse"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    """One SQLite-backed idhub: the SDK never sees the database, so one engine suffices."""
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    return live


def _claims(idhub: LiveServer, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": idhub.url, "sub": "0f" * 16, "aud": AUD, "client_id": "oa", "iat": now,
        "exp": now + 600, "jti": f"j-{time.monotonic_ns()}", "scope": "openid",
    }  # fmt: skip
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(idhub: LiveServer, alg: str = "ES256", header: dict[str, Any] | None = None,
            **changes: Any) -> str:  # fmt: skip
    kid, key = idhub.services.keys.signer(alg)
    head = {"typ": "at+jwt", "alg": alg, "kid": kid, **(header or {})}
    return sign(head, _claims(idhub, **changes), key)


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


class Counting(httpx.Client):
    """A real HTTP client that counts what it asks for, by path."""

    def __init__(self) -> None:
        super().__init__(timeout=5.0, event_hooks={"request": [self._count]})
        self.paths: list[str] = []

    def _count(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)


def test_each_failure_has_its_own_exception(idhub: LiveServer) -> None:
    v = TokenValidator.from_discovery(idhub.url, audience=AUD)
    good = _signed(idhub)
    assert v.validate(good)["aud"] == AUD
    head, body, sig = good.split(".")
    cases: list[tuple[type[e.InvalidToken], str]] = [
        (e.MalformedToken, "not-a-token"),
        (e.MalformedToken, f"{head}.{body}"),
        (e.MalformedToken, f"{head}.{body}.{sig}="),  # padding is not base64url
        (e.MalformedToken, f"{head}.{body}.{sig[:-2]}+/"),  # nor is the standard alphabet
        (e.MalformedToken, f"{head}.{body}.签名"),
        (e.MalformedToken, "x" * 20_000),
        (e.MalformedToken, _signed(idhub, header={"crit": ["exp"], "exp": 1})),
        (e.WrongTokenType, _signed(idhub, header={"typ": "JWT"})),
        (e.AlgorithmNotAllowed, _reheaded(good, alg="none")),
        # The ES256 key's kid with RS256 named: the key decides the algorithm, not the header.
        (e.AlgorithmNotAllowed, _reheaded(good, alg="RS256")),
        (e.UnknownKey, _signed(idhub, header={"kid": "no-such-key"})),
        (e.BadSignature, f"{head}.{_b64(_claims(idhub, sub='someone-else'))}.{sig}"),
        (e.MissingClaim, _signed(idhub, jti=None)),
        (e.MissingClaim, _signed(idhub, exp="tomorrow")),
        (e.MissingClaim, _signed(idhub, sub=7)),
        (e.WrongIssuer, _signed(idhub, iss="https://evil.example")),
        (e.WrongAudience, _signed(idhub, aud=["oa", "erp"])),
        (e.Expired, _signed(idhub, exp=int(time.time()) - 31)),
        (e.NotYetValid, _signed(idhub, nbf=int(time.time()) + 60)),
        (e.NotYetValid, _signed(idhub, iat=int(time.time()) + 60)),
    ]  # fmt: skip
    for expected, token in cases:
        with pytest.raises(expected):
            v.validate(token)
    # Within the 30 s leeway, and an audience list that names the system, are fine.
    assert v.validate(_signed(idhub, exp=int(time.time()) - 20))
    assert v.validate(_signed(idhub, nbf=int(time.time()) + 20, aud=["oa", AUD]))
    # The allow-list: a system that accepts only ES256 refuses idhub's own RS256 tokens.
    only_es = TokenValidator.from_discovery(idhub.url, audience=AUD, algorithms=("ES256",))
    with pytest.raises(e.AlgorithmNotAllowed):
        only_es.validate(_signed(idhub, "RS256"))
    for alg in ("RS256", "EdDSA"):
        assert v.validate(_signed(idhub, alg))["client_id"] == "oa"


def _reheaded(token: str, **changes: str) -> str:
    """The token with its header changed (so its signature no longer covers it)."""
    head, body, sig = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return f"{_b64({**header, **changes})}.{body}.{sig}"


def test_the_cache_honours_exp_and_stays_bounded(idhub: LiveServer) -> None:
    now = [time.time()]
    v = TokenValidator.from_discovery(idhub.url, audience=AUD, cache_size=2, clock=lambda: now[0])
    short = _signed(idhub, exp=int(now[0]) + 60)
    first = v.validate(short)
    first["roles"] = ["admin"]  # a caller's change never reaches the next caller
    assert "roles" not in v.validate(short)
    now[0] += 60 + 29
    assert v.validate(short)  # within the leeway
    now[0] += 2
    with pytest.raises(e.Expired):
        v.validate(short)  # remembered, but no longer valid
    for _ in range(5):
        v.validate(_signed(idhub))
    assert len(v._cache) == 2


def test_key_rotation_is_followed_and_forged_kids_do_not_flood_idhub(idhub: LiveServer) -> None:
    http = Counting()
    v = TokenValidator.from_discovery(idhub.url, audience=AUD, http=http)
    v.validate(_signed(idhub))
    for i in range(50):
        with pytest.raises(e.UnknownKey):
            v.validate(_signed(idhub, header={"kid": f"forged-{i}"}))
    assert http.paths.count("/jwks") <= 2  # the first load, and at most one refresh a second
    idhub.services.keys.rotate(("ES256",))
    time.sleep(1.05)
    rotated = _signed(idhub)
    assert v.validate(rotated)["jti"]
    assert http.paths.count("/jwks") <= 3


def test_unreachable_keys_are_a_503_not_a_bad_token() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(e.VerifierUnavailable) as caught:
        TokenValidator.from_discovery(dead, audience=AUD)
    assert caught.value.status == 503
    v = TokenValidator(dead, audience=AUD)
    with pytest.raises(e.VerifierUnavailable):
        v.validate(_b64({"typ": "at+jwt", "alg": "ES256", "kid": "k"}) + ".e30.c2ln")


def test_introspection_sees_a_revocation_at_once(idhub: LiveServer, known_secrets) -> None:
    clients = idhub.services.clients
    _, batch_secret = clients.register(
        "oa-batch", grant_types=["client_credentials"], allowed_audiences=[AUD]
    )
    _, rs_secret = clients.register("reimburse", grant_types=["client_credentials"])
    known_secrets.add(batch_secret)
    known_secrets.add(rs_secret)
    issued = httpx.post(
        idhub.url + "/token",
        data={"grant_type": "client_credentials", "resource": AUD},
        auth=("oa-batch", batch_secret or ""),
    )
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    known_secrets.add(token)
    offline = TokenValidator.from_discovery(idhub.url, audience=AUD)
    online = TokenValidator.from_discovery(
        idhub.url, audience=AUD, introspect_as=("reimburse", rs_secret or "")
    )
    assert online.validate(token)["client_id"] == "oa-batch"
    assert offline.validate(token)
    lenient = TokenValidator.from_discovery(
        idhub.url,
        audience=AUD,
        introspection=Introspection(
            idhub.url + "/introspect", client_id="reimburse", client_secret=rs_secret, ttl=60
        ),
    )
    assert lenient.validate(token)
    revoked = httpx.post(
        idhub.url + "/revoke", data={"token": token}, auth=("oa-batch", batch_secret or "")
    )
    assert revoked.status_code == 200
    with pytest.raises(e.Revoked):
        online.validate(token)  # although its signature was checked and remembered
    assert offline.validate(token)  # offline validation cannot know: keep tokens short
    assert lenient.validate(token)  # nor can a remembered "active", for its 60 s
    wrong = TokenValidator.from_discovery(
        idhub.url, audience=AUD, introspect_as=("reimburse", "not-the-secret")
    )
    with pytest.raises(e.VerifierUnavailable):
        wrong.validate(_signed(idhub))


def test_unusable_keys_in_a_key_set_are_skipped_not_fatal() -> None:
    """A key set served over real HTTP holding, beside one good ES256 key, a 1024-bit RSA key,
    an EC point that is not on the curve, an encryption key and an unknown key type."""
    good = ec.generate_private_key(ec.SECP256R1())
    numbers = good.public_key().public_numbers()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    weak_n = weak.public_key().public_numbers().n

    def b64(value: int, size: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()

    keys = [
        {"kty": "EC", "crv": "P-256", "kid": "good", "x": b64(numbers.x, 32),
         "y": b64(numbers.y, 32)},
        {"kty": "RSA", "kid": "weak", "n": b64(weak_n, 128), "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64(numbers.x, 32),
         "y": b64(numbers.y ^ 1, 32)},
        {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": b64(numbers.x, 32),
         "y": b64(numbers.y, 32)},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
    ]  # fmt: skip

    async def jwks(_request: Request) -> JSONResponse:
        return JSONResponse({"keys": keys})

    with serve_asgi(Starlette(routes=[Route("/jwks", jwks)])) as url:
        v = TokenValidator(url, audience=AUD)
        now = int(time.time())
        claims = {"iss": url, "sub": "s", "aud": AUD, "client_id": "c", "iat": now,
                  "exp": now + 60, "jti": "j"}  # fmt: skip
        assert v.validate(sign({"typ": "at+jwt", "alg": "ES256", "kid": "good"}, claims, good))
        for kid in ("weak", "off-curve", "enc", "secret"):
            token = sign({"typ": "at+jwt", "alg": "RS256", "kid": kid}, claims, weak)
            with pytest.raises(e.UnknownKey):
                v.validate(token)

"""The client registry: validation, hashed secrets, rotation, cache invalidation across
processes (two Services on one database stand in for two workers)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, clients
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.errors import Conflict, InvalidInput, NotFound


def test_secret_is_stored_as_hmac_and_checked(services: Services) -> None:
    client, secret = services.clients.register(
        "oa", redirect_uris=["https://oa.example/cb"], scope="openid profile"
    )
    assert secret and len(secret) >= 40
    with services.engine.connect() as conn:
        stored = conn.execute(
            select(clients.c.secret_hash).where(clients.c.client_id == "oa")
        ).scalar()
    assert stored and secret not in stored and len(stored) == 64
    assert services.clients.check_secret(client, secret)
    assert not services.clients.check_secret(client, secret[:-1] + "x")
    assert "secret_hash" not in repr(client)
    with services.engine.connect() as conn:
        details = [r.details for r in conn.execute(select(audit_events))]
    assert details and all(secret not in d for d in details)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"client_id": "bad id"}, "client id"),
        ({"redirect_uris": ["/relative"]}, "redirect URI"),
        ({"redirect_uris": ["https://x.example/cb#frag"]}, "fragment"),
        ({"grant_types": ["password"]}, "unknown grant type"),
        ({"public": True, "grant_types": ["client_credentials"]}, "public client"),
        ({"token_endpoint_auth_method": "none"}, "only public clients"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "JWKS"),
        ({"id_token_alg": "HS256"}, "signing algorithm"),
        ({"grant_types": ["authorization_code"], "redirect_uris": []}, "redirect URI"),
        ({"scope": 'openid bad"scope'}, "scope"),
    ],
)
def test_registration_refuses_what_cannot_work(
    services: Services, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "client_id": "c1",
        "redirect_uris": ["https://c.example/cb"],
        "grant_types": ["authorization_code"],
        **kwargs,
    }
    client_id = str(args.pop("client_id"))
    with pytest.raises(InvalidInput) as exc:
        services.clients.register(client_id, **args)  # type: ignore[arg-type]
    assert message in str(exc.value)


def test_duplicates_rotation_and_removal(services: Services) -> None:
    _, secret = services.clients.register("svc", grant_types=["client_credentials"])
    with pytest.raises(Conflict):
        services.clients.register("svc", grant_types=["client_credentials"])
    rotated, new_secret = services.clients.rotate_secret("svc")
    assert new_secret != secret
    assert not services.clients.check_secret(rotated, secret or "")
    assert services.clients.check_secret(rotated, new_secret)
    services.clients.remove("svc")
    assert services.clients.get("svc") is None
    with pytest.raises(NotFound):
        services.clients.remove("svc")
    public, none = services.clients.register(
        "spa", public=True, redirect_uris=["http://127.0.0.1:3000/cb"]
    )
    assert none is None and public.token_endpoint_auth_method == "none"
    with pytest.raises(InvalidInput):
        services.clients.rotate_secret("spa")


def test_other_processes_see_changes_after_the_recheck(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    settings = make_settings(db_url)
    writer = make_services(settings)
    reader = make_services(settings)
    reader.clients._recheck = 0.2  # shorten the window for the test
    _, secret = writer.clients.register("svc", grant_types=["client_credentials"])
    cached = reader.clients.get("svc")
    assert cached is not None and reader.clients.check_secret(cached, secret or "")
    _, new_secret = writer.clients.rotate_secret("svc")
    time.sleep(0.25)
    fresh = reader.clients.get("svc")
    assert fresh is not None and reader.clients.check_secret(fresh, new_secret)
    writer.clients.update("svc", disabled=True)
    time.sleep(0.25)
    assert reader.clients.get("svc") is None


def test_audience_rules(services: Services) -> None:
    client, _ = services.clients.register(
        "oa",
        redirect_uris=["https://oa.example/cb"],
        allowed_audiences=["reimburse"],
        scope="openid authz",
    )
    assert client.resolve_audience(None) == "oa"
    assert client.resolve_audience("reimburse") == "reimburse"
    assert client.resolve_audience("idhub") == "idhub"
    assert client.resolve_audience("erp") is None
    plain, _ = services.clients.register("rb", redirect_uris=["https://rb.example/cb"])
    assert plain.resolve_audience("idhub") is None


def test_party_domains_without_a_database_read_only_while_fresh(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    """`party_domains_if_fresh` (the decision API's event loop) answers what `party_domains`
    would, or None whenever that answer could need the store: never a staler one."""
    settings = make_settings(db_url)
    writer = make_services(settings)
    reader = make_services(settings)
    reader.clients._recheck = 0.2
    writer.clients.register("svc", grant_types=["client_credentials"], scope="authz")
    assert reader.clients.party_domains_if_fresh("svc") is None  # never looked up
    domains = reader.clients.party_domains("svc")
    assert reader.clients.party_domains_if_fresh("svc") == domains
    writer.clients.update("svc", disabled=True)
    time.sleep(0.25)
    # The version check is due: not from memory, and the full lookup sees the change.
    assert reader.clients.party_domains_if_fresh("svc") is None
    assert reader.clients.party_domains("svc") == frozenset()
    assert reader.clients.party_domains_if_fresh("svc") == frozenset()

"""Which idhub account an upstream OpenID Connect sign-in is: the configured claim against the
identity store (SQLite and PostgreSQL), exactly one enabled account or a clear refusal."""

from __future__ import annotations

import pytest

from idhub.bootstrap import Services
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity
from idhub.core.upstream_oidc_mapping import ClaimAccounts, ClaimMatch


def identity(**claims: str) -> UpstreamIdentity:
    return UpstreamIdentity(provider="parent", subject="up-1", claims=claims, amr=("fed",))


def accounts(services: Services, **rule: object) -> ClaimAccounts:
    return ClaimAccounts({"parent": ClaimMatch(**rule)}, services.identity)  # type: ignore[arg-type]


def refusal(found: ClaimAccounts, who: UpstreamIdentity) -> UpstreamFailed:
    with pytest.raises(UpstreamFailed) as failed:
        found.find(who)
    return failed.value


def test_email_matches_in_canonical_form(services: Services) -> None:
    alice = services.identity.create_user(username="alice", email="Alice@Example.com")
    services.identity.create_user(username="alicia", email="alicia@example.com")
    found = accounts(services)
    for spelled in ("alice@example.com", " ALICE@EXAMPLE.COM ", "Alice@Example.com"):
        assert found.find(identity(email=spelled)) == alice, spelled


def test_username_and_employee_number_match(services: Services) -> None:
    bob = services.identity.create_user(username="bob", employee_id="E2002")
    by_name = accounts(services, match="username", claim="preferred_username")
    assert by_name.find(identity(preferred_username="Bob")) == bob
    # Full-width letters typed on a Chinese IME are the same name (NFKC).
    assert by_name.find(identity(preferred_username="ｂｏｂ")) == bob
    by_number = accounts(services, match="employee_number", claim="employee_id")
    assert by_number.find(identity(employee_id="e2002")) == bob
    assert refusal(by_number, identity(employee_id="E2003")).code == "unknown_user"


def test_unknown_user_two_accounts_and_a_disabled_one_are_refused(services: Services) -> None:
    found = accounts(services)
    nobody = refusal(found, identity(email="carol@example.com"))
    assert nobody.code == "unknown_user"
    assert str(nobody) == "no idhub account for email 'carol@example.com' (from parent)"

    services.identity.create_user(username="dave", email="shared@example.com")
    services.identity.create_user(username="dave2", email="Shared@example.com")
    conflict = refusal(found, identity(email="shared@example.com"))
    assert conflict.code == "ambiguous_user" and "2 idhub accounts" in str(conflict)

    erin = services.identity.create_user(username="erin", email="erin@example.com")
    services.identity.set_disabled(erin.id, True, reason="left")
    assert refusal(found, identity(email="erin@example.com")).code == "user_disabled"
    # A disabled namesake does not hide the one enabled account with that address.
    again = services.identity.create_user(username="erin.new", email="erin@example.com")
    assert found.find(identity(email="erin@example.com")) == again


def test_usernames_told_apart_only_by_case_are_a_conflict(services: Services) -> None:
    services.identity.create_user(username="frank")
    services.identity.create_user(username="Frank")
    found = accounts(services, match="username", claim="preferred_username")
    assert refusal(found, identity(preferred_username="frank")).code == "ambiguous_user"


def test_a_verified_email_can_be_required(services: Services) -> None:
    grace = services.identity.create_user(username="grace", email="grace@example.com")
    strict = accounts(services, require_email_verified=True)
    assert strict.find(identity(email="grace@example.com", email_verified="true")) == grace
    for claims in ({"email_verified": "false"}, {}):
        failed = refusal(strict, identity(email="grace@example.com", **claims))
        assert failed.code == "email_not_verified"


def test_a_missing_claim_and_another_provider(services: Services) -> None:
    found = accounts(services)
    assert refusal(found, identity(name="nobody")).code == "claim_missing"
    assert refusal(found, identity(email="   ")).code == "claim_missing"
    assert refusal(found, identity(email="x" * 400)).code == "claim_invalid"
    other = UpstreamIdentity(provider="dingtalk", subject="u", claims={}, amr=("fed",))
    assert found.find(other) is None


def test_an_unknown_match_is_refused() -> None:
    with pytest.raises(ValueError, match="match must be one of"):
        ClaimMatch(match="phone")

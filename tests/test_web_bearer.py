"""Verified caller tokens remembered for the decision API's event loop (web/bearer.py)."""

from __future__ import annotations

from idhub.core.clock import FrozenClock
from idhub.web.bearer import VerifiedBearers


def test_a_remembered_token_is_forgotten_at_its_exp() -> None:
    clock = FrozenClock(1000.0)
    remembered = VerifiedBearers(clock)
    remembered.remember("token-a", {"jti": "a", "exp": 1010})
    assert remembered.recall("token-a") == {"jti": "a", "exp": 1010}
    assert remembered.recall("token-b") is None
    clock.advance(10)  # exp itself is expired, as `AccessTokens.verify` has it
    assert remembered.recall("token-a") is None
    clock.advance(-5)
    assert remembered.recall("token-a") is None  # forgotten, not only hidden


def test_claims_without_a_number_exp_are_never_recalled() -> None:
    remembered = VerifiedBearers(FrozenClock(1000.0))
    remembered.remember("t", {"jti": "a"})
    remembered.remember("u", {"jti": "b", "exp": True})
    assert remembered.recall("t") is None
    assert remembered.recall("u") is None


def test_memory_is_bounded_and_holds_no_token() -> None:
    remembered = VerifiedBearers(FrozenClock(0.0), limit=3)
    for i in range(10):
        remembered.remember(f"secret-token-{i}", {"jti": str(i), "exp": 100})
    assert len(remembered._claims) <= 3
    assert all(b"secret-token" not in key for key in remembered._claims)
    assert remembered.recall("secret-token-9") is not None

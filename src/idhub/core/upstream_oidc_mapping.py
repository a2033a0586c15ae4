"""Which idhub account an upstream OpenID Connect sign-in is: one configured claim compared with
one idhub attribute, and exactly one enabled account must match.

Never a guess: no account is "no idhub account for ...", two enabled accounts with the same
value are a conflict for an admin to resolve, an account that is disabled stays out. Nothing
is created here; a sign-in through another provider reaches people idhub already has.

Values are compared in idhub's canonical form for names (`core.identifiers.canonical_name`:
NFKC, case folded, trimmed), as a password sign-in compares usernames and the directory sync
compares emails: `Alice@Example.com` upstream is `alice@example.com` here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from idhub.core.identifiers import canonical_name
from idhub.core.identity import User
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity

# match = ... -> the User attribute it compares.
ATTRIBUTES = {"email": "email", "username": "username", "employee_number": "employee_id"}
# Enough to tell one from several without reading every namesake.
_ENOUGH = 5
_MAX_VALUE = 320


@dataclass(frozen=True)
class ClaimMatch:
    """`[upstream.<name>]` match / claim / require_email_verified, as values."""

    match: str = "email"
    claim: str = "email"
    require_email_verified: bool = False

    def __post_init__(self) -> None:
        if self.match not in ATTRIBUTES:
            raise ValueError(f"match must be one of {', '.join(ATTRIBUTES)}")


class AccountLookup(Protocol):
    def users_matching(self, attribute: str, value: str, *, limit: int) -> list[User]:
        """Up to `limit` users whose `attribute` ("email", "username", "employee_id") equals
        `value` in canonical form, disabled ones included."""
        ...


def plan_match_value(rule: ClaimMatch, identity: UpstreamIdentity) -> str:
    """The canonical value to look for, or UpstreamFailed saying why there is none."""
    raw = identity.claims.get(rule.claim, "")
    value = canonical_name(raw) if isinstance(raw, str) else ""
    if not value:
        raise UpstreamFailed(
            f"{identity.provider} sent no {rule.claim!r} claim to match an idhub account by",
            code="claim_missing",
        )
    if len(value) > _MAX_VALUE:
        raise UpstreamFailed(
            f"{identity.provider} sent a {rule.claim!r} claim too long to be an idhub {rule.match}",
            code="claim_invalid",
        )
    if rule.require_email_verified and identity.claims.get("email_verified") != "true":
        raise UpstreamFailed(
            f"{identity.provider} has not verified this person's email address, and this "
            "provider is set to accept verified addresses only",
            code="email_not_verified",
        )
    return value


def plan_account(rule: ClaimMatch, identity: UpstreamIdentity, found: list[User]) -> User:
    """Pure rule: the one enabled account among `found`, or UpstreamFailed."""
    what = f"{rule.match} {identity.claims.get(rule.claim, '')!r}"
    enabled = [user for user in found if not user.disabled]
    if len(enabled) == 1:
        return enabled[0]
    if len(enabled) > 1:
        raise UpstreamFailed(
            f"{len(enabled)} idhub accounts have {what} (from {identity.provider}); an admin "
            "must make it unique before this person can sign in this way",
            code="ambiguous_user",
        )
    if found:
        raise UpstreamFailed(
            f"the idhub account with {what} (from {identity.provider}) is disabled",
            code="user_disabled",
        )
    raise UpstreamFailed(
        f"no idhub account for {what} (from {identity.provider})", code="unknown_user"
    )


class ClaimAccounts:
    """`UpstreamAccounts` for OIDC providers: each provider's `ClaimMatch` applied to the
    store. `find` returns None only for a provider it has no rule for (another kind's), so a
    caller can ask several in turn; for its own providers it returns the account or raises."""

    def __init__(self, rules: Mapping[str, ClaimMatch], lookup: AccountLookup) -> None:
        self._rules = dict(rules)
        self._lookup = lookup

    def find(self, identity: UpstreamIdentity) -> User | None:
        rule = self._rules.get(identity.provider)
        if rule is None:
            return None
        value = plan_match_value(rule, identity)
        found = self._lookup.users_matching(ATTRIBUTES[rule.match], value, limit=_ENOUGH)
        return plan_account(rule, identity, found)

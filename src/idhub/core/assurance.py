"""How sure idhub is of who signed in (`acr` / `amr`), and who must present a second factor.

Three levels, named by the `acr` a session carries and its ID tokens repeat:

- `urn:idhub:acr:pwd` (0): a password only;
- `urn:idhub:acr:remembered` (1): a password on a browser where this person presented a second
  factor within the remembered-device lifetime;
- `urn:idhub:acr:mfa` (2): a second factor presented at this sign-in (or a passkey with user
  verification, which is two factors in one).

A request needs level 1 when the person must use a second factor (everyone, by an admin's flag,
by a role named in `policies/mfa.yaml`, or because they enrolled one) or the system is
registered with `require_mfa`; it needs level 2 when the system asks for `urn:idhub:acr:mfa`
in OIDC `acr_values` (step-up: a remembered device is not enough then).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from idhub.core.authz.mfa_roles import MfaRoleRule, check_rules_require
from idhub.core.identity import User

ACR_PASSWORD = "urn:idhub:acr:pwd"  # noqa: S105 - an assurance level name
ACR_REMEMBERED = "urn:idhub:acr:remembered"
ACR_MFA = "urn:idhub:acr:mfa"
ACR_VALUES = (ACR_PASSWORD, ACR_REMEMBERED, ACR_MFA)
# A sign-in through another provider (DingTalk, WeCom, an upstream OIDC IdP): one factor as far
# as idhub knows (level 0, like a password); the session's `amr` names the provider's method.
ACR_UPSTREAM = "urn:idhub:acr:upstream"
_LEVELS = {ACR_PASSWORD: 0, ACR_REMEMBERED: 1, ACR_MFA: 2}

# RFC 8176 authentication method references.
AMR_PASSWORD = "pwd"  # noqa: S105 - RFC 8176 method name
AMR_OTP = "otp"
AMR_HARDWARE_KEY = "hwk"
AMR_USER_PRESENCE = "user"

MODES = ("all", "policy", "off")


def level_of(acr: str | None) -> int:
    """A session's level; sessions from before idhub knew levels are password-only."""
    return _LEVELS.get(acr or "", 0)


def acr_for(level: int) -> str:
    return {0: ACR_PASSWORD, 1: ACR_REMEMBERED}.get(level, ACR_MFA)


def plan_requested_level(acr_values: Iterable[str]) -> int:
    """The level a system asks for with `acr_values`: a list of values it would accept, so the
    lowest known one counts; unknown values are ignored (OIDC Core 3.1.2.1: voluntary)."""
    known = [_LEVELS[value] for value in acr_values if value in _LEVELS]
    return min(known) if known else 0


def plan_required_level(
    *,
    person_required: bool,
    enrolled: bool,
    system_requires: bool,
    acr_values: Collection[str],
) -> int:
    """Pure rule: the level a request needs (see the module text)."""
    level = 1 if person_required or enrolled or system_requires else 0
    return max(level, plan_requested_level(acr_values))


class RolesOf(Protocol):
    def roles_for(self, user: User, domain: str) -> list[str]: ...


@dataclass(frozen=True)
class MfaRequirements:
    """Whether a person must use a second factor wherever they sign in.

    `mode` is `[mfa] required`: "all" (everyone), "policy" (the admin's per-person flag and the
    role rules of `policies/mfa.yaml`) or "off" (nobody is made to; people who enrolled are still
    asked, and systems' `require_mfa` and `acr_values` still count)."""

    mode: str
    flagged: Callable[[int], bool]
    rules: Callable[[], tuple[MfaRoleRule, ...]]
    roles: RolesOf
    domains: tuple[str, ...] = ()

    def check_person_required(self, user: User) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "off":
            return False
        if self.flagged(user.id):
            return True
        return check_rules_require(
            self.rules(), lambda domain: self.roles.roles_for(user, domain), domains=self.domains
        )

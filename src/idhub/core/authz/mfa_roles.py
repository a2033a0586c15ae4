"""Roles whose holders must use a second factor: the rules of `policies/mfa.yaml`.

    require:
      - {role: "finance*", domains: [reimburse, archive]}
      - {role: admin, domain: "*"}

A person holding a matching role (a name, or a `*` pattern over role names) in one of the
listed domains must present a second factor wherever they sign in: the role is what makes
their account worth more to an attacker, not the system they happen to open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

ANY = "*"


@dataclass(frozen=True)
class MfaRoleRule:
    role: str
    domains: tuple[str, ...]
    # `file:line` of the rule, for messages.
    where: str = ""

    def check_matches(self, roles: list[str]) -> bool:
        return any(fnmatchcase(role, self.role) for role in roles)


def check_rules_require(
    rules: tuple[MfaRoleRule, ...],
    roles_in: Callable[[str], list[str]],
    *,
    domains: tuple[str, ...],
) -> bool:
    """True when the roles a person holds (`roles_in(domain)`) match any rule; a rule's domain
    `*` stands for every configured domain."""
    asked: dict[str, list[str]] = {}
    for rule in rules:
        for domain in domains if ANY in rule.domains else rule.domains:
            if domain not in asked:
                asked[domain] = roles_in(domain)
            if rule.check_matches(asked[domain]):
                return True
    return False

"""Who may read the audit trail through the audit API, once their token carries `audit:read`.

It depends on whom the token was issued to:

* a user (`sub` is a user's subject, not the client_id): idhub's own policy decides, as the
  decision API would for the user in domain `idhub`, type `audit_event`, action `read`. Unknown
  and disabled users are denied. The decision goes to the audit trail like the decision API's
  (denials always, allows as `[audit] decisions` says);
* a client (client credentials: `sub` is the client_id): only a client listed in `[server]
  admin_clients`, the machine path that predates the policy.

So a user's token from an admin client still reads only what the user may.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from idhub.core.audit import Actor, RequestContext
from idhub.core.authz.decisions import Answer, Decisions, Question
from idhub.core.authz.engine import Decision
from idhub.core.identity import User

READ_SCOPE = "audit:read"
# What a user's token is checked for in idhub's own policy (policies/idhub.csv).
DOMAIN, RESOURCE_TYPE, ACTION = "idhub", "audit_event", "read"


@dataclass(frozen=True)
class ReadAccess:
    allowed: bool
    # Why not, in a sentence for the caller (empty when allowed).
    refusal: str = ""


class AuditReaders:
    """`services.audit_readers`: decides whether a token's holder may read the trail."""

    def __init__(
        self,
        *,
        find_user: Callable[[str], User | None],
        decisions: Decisions,
        admin_clients: Iterable[str],
    ) -> None:
        self._find_user = find_user
        self._decisions = decisions
        self._admins = frozenset(admin_clients)

    def access(self, *, client_id: str, sub: str, ctx: RequestContext | None) -> ReadAccess:
        """Raises `PolicyError` when a user asks and no policy is serving."""
        user = self._find_user(sub) if sub and sub != client_id else None
        if user is None:
            if client_id in self._admins:
                return ReadAccess(True)
            return ReadAccess(
                False, f"client {client_id!r} is not an admin client ([server] admin_clients)"
            )
        question = Question(sub=sub, domain=DOMAIN, type=RESOURCE_TYPE, action=ACTION)
        answers = self._decisions.up_to_date(self._decisions.current(), [question])
        answer: Answer
        if user.disabled:
            # The directory the engine holds may be a poll behind the identity store.
            answer = Answer(Decision(False), "user is disabled", None)
        else:
            answer = answers.decide(question)
        answers.record(
            [
                (
                    {**question.fields(), "user": user.username, "client_id": client_id},
                    answer.decision,
                )
            ],
            actor=Actor("user", user.sub),
            ctx=ctx,
        )
        if answer.allowed:
            return ReadAccess(True)
        return ReadAccess(
            False,
            f"user {user.username!r} may not read the audit trail: {answer.reason} "
            f"(policy domain {DOMAIN}, {RESOURCE_TYPE} {ACTION})",
        )

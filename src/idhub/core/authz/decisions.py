"""The questions systems and admins ask the policy about a user, and how they are answered.

The decision API (`/api/v1/authz/*`) and the audit API parse their requests into `Question`s
and ask `Decisions.current()`, which answers them all against one engine, so every answer of a
request carries the same policy version. The rules about asking live here:

* every field is brought to its canonical spelling once (`canonical_question`, rules in
  `core/identifiers.py`) before anything is matched; a department path with `.`, `..` or
  empty segments is invalid input, never resolved;
* a user is named by username (`user`) or OIDC subject (`sub`, what every idhub token
  carries); unknown and disabled users are denied before the policy is asked, with a reason
  that says which (`unknown subject`, `unknown user`, a subject sent as `user`). A name the
  serving directory snapshot does not know makes the snapshot refresh first (`up_to_date`):
  a user created or synced since the last poll is not "unknown" for a poll interval. A
  record whose `owner` is not given or names no directory user is denied where a deny on
  the user's own records (`self`) applies: such a deny must never miss because the owner was
  left out or spelled as nobody;
* who may ask about whom (`require_may_ask`): a system (a client-credentials token, whose
  `sub` is its client_id) about anyone in the domains it is a party to — its own client_id and
  the audiences it is registered to obtain tokens for — and about every domain only with the
  `authz:admin` scope; a user's token about its own user only, unless the policy grants that
  user `permission` `query` in domain `idhub` over the person asked about;
* a client whose client_id names a policy domain asks about that domain unless it names
  another; any other client, and every explain, must name the domain;
* systems often number their records, so an integer resource id is the same record as its
  decimal text;
* a batch holds 1 to `MAX_BATCH` questions and is recorded in the audit trail in one write
  (denials always, allows as `[audit] decisions` says).

Messages of the `InvalidInput` raised here name the field (`domain ...`); the caller says
where in its request that field was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from idhub.core import metrics as _metrics
from idhub.core.audit import Actor, PendingEvent, RequestContext
from idhub.core.authz.data_scopes import NOTHING, ScopeSet
from idhub.core.authz.engine import Decision, Engine, explanation_json
from idhub.core.authz.model import user_subject
from idhub.core.authz.sod_dynamic import NO_ACTORS, canonical_actors
from idhub.core.identifiers import canonical_name, canonical_path, canonical_sub
from idhub.errors import AccessDenied, InvalidInput, StorageError

MAX_BATCH = 1000
# Token scopes: asking about users, and the admin's questions (explain, policy status).
ASK_SCOPE = "authz"
ADMIN_SCOPE = "authz:admin"
# The right, in idhub's own policy, to ask about someone else with a user's token: the record
# is the person asked about (owner: their username, dept: their department).
QUERY_DOMAIN, QUERY_TYPE, QUERY_ACTION = "idhub", "permission", "query"
# How many distinct unknown names of one request are looked up in the directory store.
MAX_LOOKUPS = 50
# After a refresh that found the directory unchanged, unknown names wait this long (seconds)
# before the next: each refresh reads the directory's fingerprint.
REFRESH_FLOOR = 0.2


@dataclass(frozen=True)
class Question:
    """May this user do `action` on a `type` record in `domain`? "" means "not given"."""

    domain: str
    type: str
    action: str
    user: str = ""
    sub: str = ""
    owner: str = ""
    dept: str = ""
    resource_id: str = ""
    # The record's earlier actors by step (`created_by` -> usernames): dynamic SoD.
    actors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # True once every field is in its canonical spelling (`canonical_question`).
    canonical: bool = field(default=False, compare=False)

    def fields(self) -> dict[str, str]:
        """Every field by name, in the order the audit trail shows them."""
        return {
            "user": self.user,
            "sub": self.sub,
            "domain": self.domain,
            "type": self.type,
            "action": self.action,
            "owner": self.owner,
            "dept": self.dept,
            "resource_id": self.resource_id,
        }

    def actors_json(self) -> dict[str, list[str]] | None:
        return {step: list(people) for step, people in self.actors} or None


@dataclass(frozen=True)
class Answer:
    decision: Decision
    reason: str
    # The user the question was about, None when no enabled directory user matched.
    username: str | None
    # The dynamic SoD rule (sod.yaml `records`) that denied it, "" when none did.
    sod_rule: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


@dataclass(frozen=True)
class ScopeAnswer:
    """The records the user may see; NOTHING (with the reason) for an unknown or disabled user."""

    scope: ScopeSet
    username: str | None
    reason: str = ""


@dataclass(frozen=True)
class Asker:
    """Who holds the token that asks. A client-credentials token is the system's own: its
    `sub` is its client_id. Any other token was issued to the user whose subject it carries."""

    client_id: str
    sub: str
    # The policy domains the system is a party to besides its own client_id: the audiences
    # it is registered for (`allowed_audiences`, `default_audience`).
    domains: frozenset[str] = frozenset()
    # The token carries `authz:admin` (an admin tool): it may ask about every domain.
    admin: bool = False

    @property
    def is_system(self) -> bool:
        return not self.sub or self.sub == self.client_id


def canonical_question(question: Question) -> Question:
    """The question in canonical spelling; `InvalidInput` naming the field otherwise."""
    if question.canonical:
        return question
    try:
        dept = canonical_path(question.dept)
    except InvalidInput as exc:
        raise InvalidInput(f"dept: {exc.message}") from None
    # Every field is given, so a new `Question` rather than `dataclasses.replace`, which
    # walks the fields to copy what is then overridden anyway (a few µs per check).
    return Question(
        domain=canonical_name(question.domain),
        type=canonical_name(question.type),
        action=canonical_name(question.action),
        user=canonical_name(question.user),
        sub=canonical_sub(question.sub),
        owner=canonical_name(question.owner),
        dept=dept,
        resource_id=question.resource_id.strip(),
        actors=tuple(
            (canonical_name(step), tuple(canonical_name(p) for p in people))
            for step, people in question.actors
        ),
        canonical=True,
    )


def resource_id_text(value: object) -> object:
    """An integer resource id as its decimal text; any other value as given, for the caller
    to validate (a boolean is not a number here)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def require_batch_size(count: int) -> None:
    if count < 1:
        raise InvalidInput("`requests` must be a non-empty list")
    if count > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} requests per batch, got {count}")


class DecisionSource(Protocol):
    """The live policy (`AuthzService`): its engine and the audit of its decisions."""

    @property
    def engine(self) -> Engine:
        """Raises `PolicyError` while no policy could be loaded."""
        ...

    def status(self) -> dict[str, Any]: ...

    def record_decisions(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> int: ...

    def decision_events(
        self,
        decisions: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        version: str,
        ctx: RequestContext | None = None,
    ) -> list[PendingEvent]: ...

    def append_decision_events(self, events: Sequence[PendingEvent]) -> None: ...


class Decisions:
    """`services.decisions`: questions about users, answered against the serving policy."""

    def __init__(
        self,
        source: Callable[[], DecisionSource],
        *,
        exists: Callable[[str, str], bool] | None = None,
        refresh: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Resolved per request, so building the web app does not build the policy service.
        self._source = source
        # Whether the directory store holds a user by ("sub" | "user", canonical value).
        self._exists = exists
        # Recompiles the serving policy on a fresh directory snapshot; True if it moved.
        self._refresh = refresh
        self._clock = clock
        self._idle_until = float("-inf")
        self._lock = threading.Lock()

    # Decision counts and latency; a server sets the Prometheus adapter (start_metrics).
    metrics: _metrics.Metrics = _metrics.NO_METRICS

    def current(self) -> PolicyAnswers:
        """Answers bound to the engine serving now; raises `PolicyError` if there is none."""
        source = self._source()
        return PolicyAnswers(source.engine, source, self.metrics)

    def policy_status(self) -> dict[str, Any]:
        return self._source().status()

    def up_to_date(
        self, answers: PolicyAnswers, questions: Sequence[Question], *, asker_sub: str = ""
    ) -> PolicyAnswers:
        """`answers`, or answers from a fresh directory snapshot when a question (or the
        asking user's token) names a user the store holds but the serving snapshot lacks.

        Tokens name people by `sub` from the moment they exist; the snapshot learns of a new
        user only at the next poll. Made-up names cost one indexed lookup each and never a
        refresh. Questions parsed against `answers` stay valid: a directory refresh keeps the
        policy, hence the domains they were checked against."""
        if self._exists is None or self._refresh is None:
            return answers
        missing = answers.unknown_names(questions, asker_sub=asker_sub)[:MAX_LOOKUPS]
        try:
            if not any(self._exists(kind, value) for kind, value in missing):
                return answers
            now = self._clock()
            with self._lock:
                if now < self._idle_until:
                    return answers
                moved = self._refresh()
                if not moved:
                    self._idle_until = now + REFRESH_FLOOR
        except StorageError:
            return answers  # the snapshot we have still answers; the poll retries
        return self.current() if moved else answers


class PolicyAnswers:
    """Every answer of one request, from one engine (one policy version)."""

    def __init__(
        self,
        engine: Engine,
        source: DecisionSource,
        metrics: _metrics.Metrics = _metrics.NO_METRICS,
    ) -> None:
        self.engine = engine
        self._source = source
        self._metrics = metrics

    @property
    def version(self) -> str:
        return self.engine.version

    def domain_for(self, asked: str, *, client: str | None) -> str:
        """The domain a question is about: the one asked, else the asking client's own."""
        domains = self.engine.domains
        asked = canonical_name(asked)
        own = canonical_name(client) if client else ""
        domain = asked or (own if own in domains else "")
        if not domain:
            raise InvalidInput("domain is required")
        if domain not in domains:
            raise InvalidInput(
                f"domain: unknown domain {domain!r} (configured: {', '.join(domains)})"
            )
        return domain

    def _named(self, question: Question) -> str | None:
        """The canonical username of the directory user a canonical question names."""
        if question.sub:
            return self.engine.username_for_sub(question.sub)
        return question.user if question.user in self.engine.directory.users else None

    def unknown_names(
        self, questions: Sequence[Question], *, asker_sub: str = ""
    ) -> list[tuple[str, str]]:
        """The distinct ("sub" | "user", canonical value) the questions (and the asking user)
        name that this snapshot holds no user for, in order."""
        directory = self.engine.directory
        names: dict[tuple[str, str], None] = {}
        if asker_sub and self.engine.username_for_sub(asker_sub) is None:
            names[("sub", canonical_sub(asker_sub))] = None
        for question in questions:
            question = canonical_question(question)
            if self._named(question) is not None or question.user in directory.ambiguous:
                continue
            names[("sub", question.sub) if question.sub else ("user", question.user)] = None
        return list(names)

    def username_of(self, question: Question) -> tuple[str | None, str]:
        """(username or None, why not) for the user a question names by `sub` or `user`."""
        question = canonical_question(question)
        name = self._named(question)
        if name is None:
            if question.sub:
                return None, "unknown subject: no directory user has this sub"
            if question.user in self.engine.directory.ambiguous:
                return None, "ambiguous user name"
            if self.engine.username_for_sub(question.user) is not None:
                # The mistake every system makes once: the token's `sub` passed as a name.
                return None, "unknown user: this is a user's subject; send it as `sub`"
            return None, "unknown user"
        if self.engine.directory.users[name].disabled:
            return None, "user is disabled"
        return name, ""

    def owner_refusal(self, username: str, question: Question, decision: Decision) -> Answer | None:
        """The denial of an allow that a deny on the user's own records would have beaten, had
        the owner been a known directory user; None when there is nothing to deny."""
        if not decision.allowed:
            return None
        rule = self.engine.owner_deny(
            user_subject(username), question.domain, question.type, question.action, question.owner
        )
        if rule is None:
            return None
        why = "unknown owner" if question.owner else "owner not given"
        if question.owner in self.engine.directory.ambiguous:
            why = "ambiguous owner name"
        return Answer(
            Decision(False, rule),
            f"{why}: the record may be the user's own, which {rule.source} denies",
            username,
        )

    def require_may_ask(self, asker: Asker, questions: Sequence[Question]) -> None:
        """Raises `AccessDenied` unless the token's holder may ask about each person named."""
        if asker.is_system:
            self._require_party_to(asker, questions)
            return
        users = self.engine.directory.users
        me = self.engine.username_for_sub(asker.sub)
        if me is None or users[me].disabled:
            raise AccessDenied("the token's user is not an enabled directory user")
        for question in questions:
            target = self._named(canonical_question(question))
            if target == me:
                continue
            whom = users.get(target) if target is not None else None
            decision = self.engine.decide(
                user_subject(me),
                QUERY_DOMAIN,
                QUERY_TYPE,
                QUERY_ACTION,
                target or "",
                (whom.department or "") if whom is not None else "",
            )
            if not decision.allowed:
                raise AccessDenied(
                    f"a user's token may ask only about that user; {me!r} may not ask about "
                    f"others (policy domain {QUERY_DOMAIN}, {QUERY_TYPE} {QUERY_ACTION})"
                )

    @staticmethod
    def _require_party_to(asker: Asker, questions: Sequence[Question]) -> None:
        """A system learns the rights people hold where it takes part, not elsewhere (the OA
        system has no business learning who may pay in the ERP)."""
        if asker.admin:
            return
        mine = {canonical_name(d) for d in asker.domains} | {canonical_name(asker.client_id)}
        for question in questions:
            domain = canonical_name(question.domain)
            if domain not in mine:
                raise AccessDenied(
                    f"system {asker.client_id!r} may ask only about the domains it is registered "
                    f"for ({', '.join(sorted(mine))}), not {domain!r}; every domain needs the "
                    f"{ADMIN_SCOPE} scope"
                )

    def decide(self, question: Question) -> Answer:
        """The one way a question about a user is decided (the decision and audit APIs)."""
        started = _metrics.clock()
        answer = self._decide(question)
        # Only the policy's own domains are label values: a question's text never is.
        domain = question.domain if question.canonical else canonical_name(question.domain)
        domain = domain if domain in self.engine.domains else "other"
        self._metrics.observe("idhub_decision_duration_seconds", _metrics.clock() - started, domain)
        self._metrics.inc("idhub_decisions_total", domain, "allow" if answer.allowed else "deny")
        return answer

    def _decide(self, question: Question) -> Answer:
        question = canonical_question(question)
        username, problem = self.username_of(question)
        if username is None:
            return Answer(Decision(False), problem, None)
        decision = self.engine.decide(
            user_subject(username),
            question.domain,
            question.type,
            question.action,
            question.owner,
            question.dept,
        )
        refused = self.owner_refusal(username, question, decision)
        if refused is not None:
            return refused
        if decision.allowed:
            step = self.engine.records.refusal(
                domain=question.domain,
                obj=question.type,
                action=question.action,
                user=username,
                owner=question.owner,
                actors=dict(question.actors) if question.actors else NO_ACTORS,
            )
            if step is not None:
                return Answer(Decision(False), step.reason, username, step.rule.id)
        return Answer(decision, decision.reason, username)

    def actors_of(self, value: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """A request's `actors` in canonical spelling, checked against the steps the
        policy's `records` rules declare; `InvalidInput` naming what is wrong."""
        return tuple(canonical_actors(value, self.engine.records.actor_names).items())

    def check(
        self, questions: Sequence[Question], *, client: str, ctx: RequestContext | None
    ) -> list[Answer]:
        """Decides a batch a client asked and records it in the audit trail in one write."""
        answers, events = self.decide_batch(questions, client=client, ctx=ctx)
        self.record_events(events)
        return answers

    def decide_batch(
        self,
        questions: Sequence[Question],
        *,
        client: str,
        ctx: RequestContext | Callable[[], RequestContext | None] | None,
    ) -> tuple[list[Answer], list[PendingEvent]]:
        """A batch's answers and the audit events that must be written (`record_events`)
        before any of them is given; touches no database, so it may run on the event loop.
        `ctx` may be a function, called only when there is an event to carry it: most
        single checks record nothing, and reading the request's context was a few percent
        of one."""
        require_batch_size(len(questions))
        answers = [self.decide(question) for question in questions]
        events = self._source.decision_events(
            [
                (
                    {
                        **question.fields(),
                        "user": answer.username or question.user or None,
                        "sub": question.sub or None,
                        "actors": question.actors_json(),
                        "sod_rule": answer.sod_rule or None,
                    },
                    answer.decision,
                )
                for question, answer in zip(questions, answers, strict=True)
            ],
            actor=Actor("client", client),
            version=self.version,
            ctx=None if callable(ctx) else ctx,
        )
        if events and callable(ctx):
            context = ctx()
            events = [replace(event, ctx=context) for event in events]
        return answers, events

    def record_events(self, events: Sequence[PendingEvent]) -> None:
        """Writes `decide_batch`'s events durably (blocks on the database: a worker thread)."""
        self._source.append_decision_events(events)

    def scopes(self, question: Question) -> ScopeAnswer:
        """Which records of `type` the user may `action` (not audited: no single record)."""
        question = canonical_question(question)
        username, problem = self.username_of(question)
        if username is None:
            return ScopeAnswer(NOTHING, None, problem)
        scope = self.engine.scopes(
            user_subject(username), question.domain, question.type, question.action
        )
        return ScopeAnswer(scope, username)

    def explain(self, question: Question) -> dict[str, Any]:
        """The decision with the roles and lines behind it, as plain data."""
        question = canonical_question(question)
        username, problem = self.username_of(question)
        if username is None:
            return {"allowed": False, "reason": problem, "policy_version": self.version}
        result = self.engine.explain(
            user_subject(username),
            question.domain,
            question.type,
            question.action,
            question.owner,
            question.dept,
        )
        explained = explanation_json(self.engine, username, question.domain, result)
        refused = self.owner_refusal(username, question, result.decision)
        if refused is None and result.decision.allowed:
            refused = self.decide(question)
        if refused is not None and not refused.allowed:
            explained.update(allowed=False, reason=refused.reason)
        return explained

    def record(
        self,
        entries: Sequence[tuple[Mapping[str, Any], Decision]],
        *,
        actor: Actor,
        ctx: RequestContext | None,
    ) -> None:
        """Records decisions under this policy version, as `[audit] decisions` says."""
        self._source.record_decisions(entries, actor=actor, version=self.version, ctx=ctx)

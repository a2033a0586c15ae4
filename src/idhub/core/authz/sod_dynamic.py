"""Dynamic segregation of duties: at decision time, no person performs two conflicting steps
on one record (create and approve, approve and pay).

The decision API passes the record's earlier actors (`"actors": {"created_by": "alice",
"approved_by": ["bob", "carol"]}`); `sod.yaml`'s `records` rules say which actions perform
which step. An action belonging to one step of a rule is denied to anyone named as the
actor of another step of that rule on the same record. A rule's `owner: <step>` makes the
record's owner an actor of that step as well, so "nobody approves their own report" needs no
actors at all. Names are canonical (`core/identifiers.py`) before they are compared, exactly
like the user and owner of the question.

Only allows are looked at (a deny stays a deny), and a rule is looked up by (domain, type)
in a dict built once per policy: a decision with actors costs a few dict lookups (the
benchmark in bench/bench_sod.py measures it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idhub.core.authz.model import ANY, NAME_RE
from idhub.core.authz.sod_rules import RecordRule, SodPolicy
from idhub.core.identifiers import canonical_name
from idhub.errors import InvalidInput

# Actors of one step on one record (multi-level approvals name several people).
MAX_PEOPLE = 100
MAX_ACTORS = 20
Actors = Mapping[str, tuple[str, ...]]
NO_ACTORS: Actors = {}


@dataclass(frozen=True, slots=True)
class Refusal:
    rule: RecordRule
    # The step the request would perform, and the one the user already performed.
    step: str
    earlier: str
    user: str

    @property
    def reason(self) -> str:
        return (
            f"denied by sod rule {self.rule.id} ({self.rule.source}): {self.user} is this "
            f"record's {self.earlier} and may not also be its {self.step}: {self.rule.reason}"
        )


class RecordIndex:
    """The `records` rules of one policy by (domain, type), each with action -> step."""

    def __init__(self, sod: SodPolicy | None) -> None:
        self.rules: dict[tuple[str, str], list[tuple[RecordRule, dict[str, str]]]] = {}
        self.actor_names: frozenset[str] = frozenset()
        if sod is None:
            return
        names: set[str] = set()
        for rule in sod.records:
            steps = {action: actor for actor, actions in rule.steps for action in actions}
            self.rules.setdefault((rule.domain, rule.obj), []).append((rule, steps))
            names.update(actor for actor, _ in rule.steps)
        self.actor_names = frozenset(names)

    def refusal(
        self, *, domain: str, obj: str, action: str, user: str, owner: str, actors: Actors
    ) -> Refusal | None:
        """The rule an allowed request breaks, None when it breaks none; every argument is
        canonical."""
        found = self.rules.get((domain, obj))
        if not found:
            return None
        for rule, steps in found:
            step = steps.get(action) or steps.get(ANY)
            if step is None:
                continue
            for earlier, _actions in rule.steps:
                if earlier == step:
                    continue
                if user in actors.get(earlier, ()) or (earlier == rule.owner and owner == user):
                    return Refusal(rule, step, earlier, user)
        return None


def canonical_actors(value: object, known: frozenset[str]) -> Actors:
    """`actors` of a request in canonical spelling; `InvalidInput` naming what is wrong. An
    actor name no `records` rule declares is refused: a misspelt `aproved_by` would
    otherwise silently check nothing."""
    if value is None:
        return NO_ACTORS
    if not isinstance(value, Mapping):
        raise InvalidInput("actors must be an object mapping steps (created_by, ...) to usernames")
    if len(value) > MAX_ACTORS:
        raise InvalidInput(f"actors: at most {MAX_ACTORS} steps")
    out: dict[str, tuple[str, ...]] = {}
    for key, people in value.items():
        name = canonical_name(key) if isinstance(key, str) else ""
        if not NAME_RE.match(name):
            raise InvalidInput(f"actors: {key!r} is not a step name like approved_by")
        if name not in known:
            listed = ", ".join(sorted(known)) or "none: the policy has no records rules"
            raise InvalidInput(f"actors: unknown step {key!r} (sod.yaml declares: {listed})")
        listed_people = [people] if isinstance(people, str) else people
        if people is None:
            continue
        if not isinstance(listed_people, list) or len(listed_people) > MAX_PEOPLE:
            raise InvalidInput(
                f"actors.{name} must be a username or a list of at most {MAX_PEOPLE}"
            )
        names: list[str] = []
        for person in listed_people:
            if not isinstance(person, str) or len(person) > 1000:
                raise InvalidInput(f"actors.{name} must hold usernames (strings)")
            canonical = canonical_name(person)
            if canonical:
                names.append(canonical)
        out[name] = (*out.get(name, ()), *names)
    return out

"""`Actor`, `PendingEvent` (core/audit.py) and `BasicOnly` (oidc/basic_only.py) are built by
their own `__init__`, which writes the fields into the object's `__dict__` instead of the
frozen dataclass's `object.__setattr__` per field: each behaves as the dataclass it was
declared as (defaults, a new details dict per event, equality, hash, repr, `replace`, no
assignment afterwards), compared with a reference declared the old way here."""

from __future__ import annotations

import dataclasses
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.oidc.basic_only import BasicOnly


@dataclass(frozen=True)
class OldActor:
    type: str
    id: str | None = None


@dataclass(frozen=True)
class OldPending:
    event_type: EventType
    actor: Any
    target: str | None = None
    outcome: str = "success"
    details: dict[str, Any] = field(default_factory=dict)
    ctx: RequestContext | None = None


@dataclass(frozen=True)
class OldBasic:
    data: Any
    client: Any
    secret: str
    client_id: str


def _as_old(value: Any, old: type) -> Any:
    return old(**{f.name: getattr(value, f.name) for f in dataclasses.fields(value)})


@pytest.mark.parametrize("shape", [Actor, PendingEvent, BasicOnly])
def test_the_init_is_the_class_own(shape: type) -> None:
    # The dataclass-made `__init__` is compiled from a string (`<string>`); this one is not.
    assert shape.__dict__["__init__"].__code__.co_filename.endswith(".py")
    assert shape.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_an_actor_is_the_dataclass_it_was() -> None:
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("client", "c"), {}),
        (("system",), {}),
        ((), {"type": "user", "id": "u"}),
    ]
    for args, kwargs in cases:
        new, old = Actor(*args, **kwargs), OldActor(*args, **kwargs)
        assert (new.type, new.id) == (old.type, old.id)
        assert repr(new) == repr(old).replace("OldActor", "Actor")
        assert new == Actor(new.type, new.id) and hash(new) == hash(Actor(new.type, new.id))
        assert dataclasses.astuple(new) == dataclasses.astuple(old)
    assert Actor.system() == Actor("system", "idhub")
    assert Actor("user", "a") != Actor("user", "b")
    with pytest.raises(FrozenInstanceError):
        Actor("user", "a").id = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Actor()  # type: ignore[call-arg]


def test_a_pending_event_is_the_dataclass_it_was() -> None:
    actor, ctx = Actor("client", "c"), RequestContext("1.2.3.4", "ua", "r")
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((EventType.TOKEN_ISSUED, actor), {}),
        ((EventType.TOKEN_ISSUED, actor, "t", "failure", {"a": 1}, ctx), {}),
        ((EventType.SYNC_RUN,), {"actor": actor, "details": {"n": 2}, "ctx": ctx}),
        ((), {"event_type": EventType.LOGOUT, "actor": actor, "target": "x", "outcome": "error"}),
    ]
    for args, kwargs in cases:
        new, old = PendingEvent(*args, **kwargs), OldPending(*args, **kwargs)
        assert _as_old(new, OldPending) == old
        assert repr(new) == repr(old).replace("OldPending", "PendingEvent")
        assert new == PendingEvent(*args, **kwargs)
    # Without details each event gets a dict of its own, as the default factory gave.
    first, second = PendingEvent(EventType.LOGOUT, actor), PendingEvent(EventType.LOGOUT, actor)
    assert first.details == {} and first.details is not second.details
    moved = dataclasses.replace(first, target="t", details={"k": "v"})
    assert (moved.target, moved.details, moved.actor) == ("t", {"k": "v"}, actor)
    with pytest.raises(FrozenInstanceError):
        first.target = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        PendingEvent(EventType.LOGOUT)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        PendingEvent(EventType.LOGOUT, actor, nonsense=1)  # type: ignore[call-arg]


def test_a_basic_only_request_is_the_dataclass_it_was() -> None:
    data, client = object(), object()
    new = BasicOnly(data, client, "s3cret", "cid")  # type: ignore[arg-type]
    old = OldBasic(data, client, "s3cret", "cid")
    assert _as_old(new, OldBasic) == old
    assert new == BasicOnly(data=data, client=client, secret="s3cret", client_id="cid")  # type: ignore[arg-type]
    assert repr(new) == repr(old).replace("OldBasic", "BasicOnly")
    with pytest.raises(FrozenInstanceError):
        new.secret = "other"  # type: ignore[misc]

"""NUL characters and the two databases. PostgreSQL refuses NUL in text and jsonb, SQLite
stores it: what an event records (an actor id, a target, a detail, the user agent) is stored
with U+FFFD in its place on both, where a NUL made every append recording it fail (503) on
PostgreSQL; a person's field carrying one is refused with its name on both, where SQLite
stored it and PostgreSQL failed with a storage error."""

from __future__ import annotations

import pytest

from idhub.bootstrap import Services
from idhub.core.audit import Actor, AuditFilter, EventType, PendingEvent, RequestContext
from idhub.errors import InvalidInput

NUL = "a\x00b"
SHOWN = "a\ufffdb"


def test_nul_in_an_event_is_stored_replaced_and_the_chain_verifies(services: Services) -> None:
    ctx = RequestContext(client_ip="127.0.0.1", user_agent=NUL, request_id="r\x001")
    services.audit.record(
        EventType.SYNC_RUN,
        actor=Actor("user", NUL),
        target=NUL,
        details={"name": NUL, "nested": {"list": [NUL, 1]}, NUL: "key"},
        ctx=ctx,
    )
    services.audit.record_many(
        [PendingEvent(EventType.SYNC_RUN, Actor.system("sync"), NUL, details={"n": NUL}, ctx=ctx)]
    )
    events = services.audit_log.search(AuditFilter(event_types=(EventType.SYNC_RUN.value,)))
    assert len(events) == 2
    first = next(e for e in events if e.actor_type == "user")
    assert first.actor_id == SHOWN
    assert first.target == SHOWN
    assert first.details["name"] == SHOWN
    assert first.details["nested"] == {"list": [SHOWN, 1]}
    assert first.details[SHOWN] == "key"
    assert first.user_agent == SHOWN
    assert all("\x00" not in repr(e.to_dict()) for e in events)
    assert services.audit_log.verify().ok


def test_a_persons_field_with_a_nul_is_refused_on_both_databases(services: Services) -> None:
    store = services.identity
    for field in ("display_name", "email", "phone", "employee_id"):
        with pytest.raises(InvalidInput, match="NUL"):
            store.create_user(username=f"nul-{field}", **{field: NUL})
        assert store.get_user_by_username(f"nul-{field}") is None
    user = store.create_user(username="clean", display_name="Clean")
    with pytest.raises(InvalidInput, match="NUL"):
        store.update_user(user.id, display_name=NUL)
    stored = store.get_user(user.id)
    assert stored is not None and stored.display_name == "Clean"

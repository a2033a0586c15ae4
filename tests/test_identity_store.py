from __future__ import annotations

import pytest

from idhub.bootstrap import Services
from idhub.core.identity import is_within, normalise_department_path
from idhub.errors import Conflict, InvalidInput


def test_user_lifecycle(services: Services) -> None:
    store = services.identity
    alice = store.create_user(
        username="alice", display_name="王小丽", department_path="总部/华东区/销售一部/"
    )
    assert alice.department_path == "/总部/华东区/销售一部"
    assert len(alice.sub) == 32 and "alice" not in alice.sub
    assert store.get_user_by_sub(alice.sub) == alice
    with pytest.raises(Conflict):
        store.create_user(username="alice")
    moved = store.update_user(alice.id, username="alice.wang", department_path="/总部/财务部")
    assert moved.sub == alice.sub and moved.department_path == "/总部/财务部"
    assert store.set_disabled(alice.id, True, reason="left").disabled
    assert [d.path for d in store.list_departments()] == [
        "/总部",
        "/总部/华东区",
        "/总部/华东区/销售一部",
        "/总部/财务部",
    ]


def test_groups_and_lockout(services: Services) -> None:
    store = services.identity
    bob = store.create_user(username="bob")
    group = store.ensure_group("财务审核组")
    assert store.ensure_group("财务审核组").id == group.id
    store.add_group_member(group.id, bob.id)
    store.add_group_member(group.id, bob.id)
    assert store.user_groups(bob.id) == ["财务审核组"]
    for _ in range(3):
        bob = store.register_failed_login(bob.id, lock_after=3, lock_seconds=60)
    assert bob.is_locked(services.clock.now())
    store.clear_failed_logins(bob.id)
    assert store.get_user(bob.id).locked_until is None  # type: ignore[union-attr]


def test_paths() -> None:
    assert is_within("/a/b/c", "/a/b") and not is_within("/a/bc", "/a/b")
    with pytest.raises(InvalidInput):
        normalise_department_path("/a//b")

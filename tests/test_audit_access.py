"""Who may read the audit trail (core.authz.audit_access), without HTTP: users by idhub's own
policy, clients only when listed in admin_clients."""

from __future__ import annotations

from dataclasses import replace

import pytest

from idhub.core.audit import Actor
from idhub.core.authz.audit_access import AuditReaders
from idhub.core.authz.decisions import Decisions
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import (
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    PolicySet,
    Rule,
    Source,
    parse_scope,
)
from idhub.core.identity import User
from idhub.errors import PolicyError
from tests.test_authz_decisions import FakeSource


def _engine() -> Engine:
    policy = PolicySet(
        root="t",
        rules=(
            Rule(
                "user:grace",
                "idhub",
                "audit_event",
                "read",
                parse_scope("all"),
                "allow",
                Source("idhub.csv", 3),
            ),
        ),
        links=(),
        assignments=(),
        catalog=Catalog(),
        file_hashes={"idhub.csv": "1"},
    )
    directory = DirectorySnapshot(
        users={
            "grace": DirectoryUser("grace", "sub-grace", "/audit", False, ()),
            "alice": DirectoryUser("alice", "sub-alice", "/sales", False, ()),
        },
        departments={},
        groups=frozenset(),
        version="t",
    )
    return Engine(policy, directory, ("idhub",))


def _user(username: str, *, disabled: bool = False) -> User:
    return User(id=1, sub=f"sub-{username}", username=username, disabled=disabled)


def readers(source: FakeSource, users: dict[str, User]) -> AuditReaders:
    return AuditReaders(
        find_user=users.get,
        decisions=Decisions(lambda: source),
        admin_clients=["siem"],
    )


@pytest.fixture
def source() -> FakeSource:
    return FakeSource(_engine())


USERS = {"sub-grace": _user("grace"), "sub-alice": _user("alice")}


def test_clients_read_only_when_listed_as_admin_clients(source: FakeSource) -> None:
    access = readers(source, USERS)
    assert access.access(client_id="siem", sub="siem", ctx=None).allowed
    refused = access.access(client_id="oa", sub="oa", ctx=None)
    assert not refused.allowed
    assert refused.refusal == "client 'oa' is not an admin client ([server] admin_clients)"
    # Client tokens are not policy decisions: nothing is recorded.
    assert source.recorded == []


def test_users_read_as_the_policy_says_whatever_client_they_came_through(
    source: FakeSource,
) -> None:
    access = readers(source, USERS)
    assert access.access(client_id="oa", sub="sub-grace", ctx=None).allowed
    refused = access.access(client_id="siem", sub="sub-alice", ctx=None)
    assert not refused.allowed
    assert refused.refusal == (
        "user 'alice' may not read the audit trail: no rule matched "
        "(policy domain idhub, audit_event read)"
    )
    recorded = [(entries[0][0], actor) for entries, actor, _ in source.recorded]
    assert recorded[0][0]["user"] == "grace" and recorded[0][0]["client_id"] == "oa"
    assert recorded[0][0]["domain"] == "idhub" and recorded[0][0]["type"] == "audit_event"
    assert recorded[1][1] == Actor("user", "sub-alice")


def test_a_user_disabled_in_the_store_is_refused_before_the_engine_sees_it(
    source: FakeSource,
) -> None:
    # The engine's directory still has grace enabled (a poll behind the identity store).
    users = {**USERS, "sub-grace": replace(USERS["sub-grace"], disabled=True)}
    refused = readers(source, users).access(client_id="oa", sub="sub-grace", ctx=None)
    assert not refused.allowed
    assert "user is disabled" in refused.refusal
    entries, _, _ = source.recorded[0]
    assert entries[0][1].allowed is False


def test_a_user_asking_with_no_policy_loaded_is_a_policy_error() -> None:
    access = readers(FakeSource(None), USERS)
    with pytest.raises(PolicyError):
        access.access(client_id="oa", sub="sub-grace", ctx=None)
    # The admin-client path needs no policy.
    assert access.access(client_id="siem", sub="siem", ctx=None).allowed

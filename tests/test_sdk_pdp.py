"""`PdpClient` against a real idhub: its own client-credentials token obtained, renewed and
replaced when refused; the short decision cache, emptied by a new policy version in any
answer; errors that say what the API said."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from idhub.sdk import PdpClient, PdpError, Subject
from tests.conftest import LiveServer

SALES1 = "/总部/华东区/销售一部"
READ = ("reimburse", "expense_report", "read")


class Counting(httpx.Client):
    def __init__(self) -> None:
        super().__init__(timeout=5.0, event_hooks={"request": [self._count]})
        self.paths: list[str] = []

    def _count(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)

    def asked(self, path: str) -> int:
        return self.paths.count(path)


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    services = live.services
    services.keys.ensure_active(lambda _line: None)
    identity = services.identity
    identity.create_user(username="alice", department_path=SALES1)
    bob = identity.create_user(username="bob", department_path="/总部/华东区")
    identity.set_department_manager("/总部/华东区", bob.id)
    services.authz.refresh_directory()
    return live


def _client(idhub: LiveServer, known_secrets, **kwargs: object) -> tuple[PdpClient, Counting, str]:
    _, secret = idhub.services.clients.register(
        "reimburse-pdp",
        grant_types=("client_credentials",),
        scope="authz",
        allowed_audiences=("reimburse", "idhub"),
    )
    assert secret is not None
    known_secrets.add(secret)
    http = Counting()
    pdp = PdpClient(idhub.url, client_id="reimburse-pdp", client_secret=secret, http=http, **kwargs)  # type: ignore[arg-type]
    return pdp, http, secret


def test_answers_are_kept_briefly_and_dropped_on_a_new_policy_version(
    idhub: LiveServer, known_secrets
) -> None:
    now = [1_000.0]
    pdp, http, _secret = _client(idhub, known_secrets, clock=lambda: now[0])
    first = pdp.check("bob", *READ, owner="alice", dept=SALES1)
    assert first.allowed
    assert pdp.check("bob", *READ, owner="alice", dept=SALES1) == first
    scope = pdp.scopes("bob", *READ)
    assert pdp.scopes("bob", *READ) is scope
    assert http.asked("/api/v1/authz/check") == 1 and http.asked("/api/v1/authz/scopes") == 1
    # Every field counts: another record is another question.
    assert not pdp.check("bob", *READ, owner="henry", dept="/总部/华南区").allowed
    assert http.asked("/api/v1/authz/check") == 2

    now[0] += 6  # past the 5 s the answers are kept
    pdp.check("bob", *READ, owner="alice", dept=SALES1)
    assert http.asked("/api/v1/authz/check") == 3

    # The directory moves: the next answer, to any question, carries another policy version,
    # and everything remembered from the old one is forgotten.
    old = pdp.policy_version
    idhub.services.identity.create_user(username="carol", department_path="/总部/财务部")
    assert idhub.services.authz.refresh_directory()
    fresh = pdp.check("carol", *READ, owner="carol", dept="/总部/财务部")
    assert fresh.policy_version != old and pdp.policy_version == fresh.policy_version
    again = pdp.check("bob", *READ, owner="alice", dept=SALES1)
    assert again.policy_version == fresh.policy_version
    assert http.asked("/api/v1/authz/check") == 5
    pdp.scopes("bob", *READ)
    assert http.asked("/api/v1/authz/scopes") == 2

    # A batch asks only what it does not know, and is answered on one version.
    batch = pdp.check_many(
        [
            {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read",
             "owner": "alice", "dept": SALES1},
            {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "approve",
             "owner": "alice", "dept": SALES1},
        ]
    )  # fmt: skip
    assert [d.allowed for d in batch] == [True, True]
    assert {d.policy_version for d in batch} == {fresh.policy_version}
    assert http.asked("/api/v1/authz/check") == 6


def test_unknown_people_are_asked_about_every_time(idhub: LiveServer, known_secrets) -> None:
    pdp, http, _secret = _client(idhub, known_secrets)
    nobody = Subject("0" * 32)
    assert not pdp.check(nobody, *READ).allowed
    assert not pdp.check(nobody, *READ).allowed
    assert http.asked("/api/v1/authz/check") == 2  # they may exist a moment later


def test_the_clients_own_token_is_renewed_and_replaced(idhub: LiveServer, known_secrets) -> None:
    now = [1_000.0]
    pdp, http, secret = _client(idhub, known_secrets, clock=lambda: now[0], cache_ttl=0)
    pdp.check("bob", *READ)
    pdp.check("bob", *READ)
    assert http.asked("/token") == 1  # one token for many questions, no cache involved
    lifetime = idhub.services.settings.tokens.access_token_ttl
    now[0] += lifetime - 29  # within 30 s of its expiry: renewed before it is refused
    pdp.check("bob", *READ)
    assert http.asked("/token") == 2

    # Revoked behind the client's back: the API says 401, the client gets a new token once.
    revoked = httpx.post(
        idhub.url + "/revoke", data={"token": pdp._token}, auth=("reimburse-pdp", secret)
    )
    assert revoked.status_code == 200
    assert pdp.check("bob", *READ, owner="bob").allowed
    assert http.asked("/token") == 3


def test_errors_say_what_the_api_said(idhub: LiveServer, known_secrets) -> None:
    pdp, _http, _secret = _client(idhub, known_secrets)
    with pytest.raises(PdpError) as refused:
        pdp.check("bob", "erp", "voucher", "post")  # not a domain this system is party to
    assert (refused.value.status, refused.value.error) == (403, "access_denied")
    assert "may ask only about the domains it is registered for" in str(refused.value)
    with pytest.raises(PdpError) as wrong:
        PdpClient(idhub.url, client_id="reimburse-pdp", client_secret="wrong").check("bob", *READ)
    assert wrong.value.error == "invalid_client"
    with pytest.raises(ValueError, match="issued to system"):
        pdp.check({"sub": "oa", "client_id": "oa"}, *READ)


def test_a_batch_is_never_answered_on_two_policy_versions(idhub: LiveServer, known_secrets) -> None:
    pdp, http, _secret = _client(idhub, known_secrets)
    held = pdp.check("bob", *READ, owner="alice", dept=SALES1)
    # The policy moves on, but nothing the client asked since has said so yet.
    idhub.services.identity.create_user(username="dave", department_path=SALES1)
    assert idhub.services.authz.refresh_directory()
    batch = pdp.check_many(
        [
            {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read",
             "owner": "alice", "dept": SALES1},
            {"user": "dave", "domain": "reimburse", "type": "expense_report", "action": "read",
             "owner": "dave", "dept": SALES1},
        ]
    )  # fmt: skip
    versions = {d.policy_version for d in batch}
    assert len(versions) == 1 and held.policy_version not in versions
    # Asked for the one it did not hold, saw a newer version, then asked the whole batch.
    assert http.asked("/api/v1/authz/check") == 3

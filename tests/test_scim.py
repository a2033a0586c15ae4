"""SCIM 2.0 over real HTTP against a live idhub, on SQLite and PostgreSQL: Users and Groups
CRUD, filters, PATCH as the big clouds send it, ETags, per-source ownership, DELETE = disable,
and the audit trail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from idhub.core.audit import AuditFilter
from tests.scim_support import (
    CRM_TOKEN,
    ENTERPRISE,
    HR_TOKEN,
    MEDIA,
    PATCH,
    Scim,
    scim_clients,
    user_body,
)


@pytest.fixture
def scim(make_live_server: Callable[..., Any], db_url: str, known_secrets: Any) -> Iterator[Scim]:
    known_secrets.add(HR_TOKEN, CRM_TOKEN)
    yield from scim_clients(make_live_server, db_url)


def _create(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/Users", json=user_body(name, **extra))
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(MEDIA)
    body: dict[str, Any] = response.json()
    return body


def test_users_crud_maps_to_one_idhub_identity(scim: Scim) -> None:
    created = _create(scim.hr, "Alice")
    assert created["userName"] == "Alice"
    assert created["meta"]["version"].startswith('W/"')
    assert created["meta"]["location"].endswith(f"/Users/{created['id']}")
    user = scim.services.identity.get_user_by_username("alice")
    assert user is not None and user.source == "scim:hr" and user.external_id == created["id"]
    assert (user.email, user.employee_id) == ("Alice@example.cn", "E-Alice")
    assert user.department_path == "/Finance" and not user.disabled

    got = scim.hr.get(f"/Users/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    assert got.headers["etag"] == created["meta"]["version"]

    replaced = scim.hr.put(
        f"/Users/{created['id']}", json=user_body("Alice", displayName="Alice Wong")
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["displayName"] == "Alice Wong"
    assert scim.services.identity.get_user_by_username("alice").display_name == "Alice Wong"

    assert scim.hr.delete(f"/Users/{created['id']}").status_code == 204
    assert scim.hr.get(f"/Users/{created['id']}").status_code == 404
    kept = scim.services.identity.get_user_by_username("alice")
    assert kept is not None and kept.disabled and kept.disabled_reason == "scim: deleted"
    # The same source provisioning the person again revives the identity under its old id.
    again = _create(scim.hr, "alice")
    assert again["id"] == created["id"]
    assert not scim.services.identity.get_user_by_username("alice").disabled


def test_bad_input_gets_scim_errors(scim: Scim) -> None:
    _create(scim.hr, "bob")
    taken = scim.hr.post("/Users", json=user_body("BOB"))
    assert taken.status_code == 409 and taken.json()["scimType"] == "uniqueness"
    assert taken.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    for bad, scim_type in [
        ({"schemas": [user_body("x")["schemas"][0]]}, "invalidValue"),
        ({"userName": "x", "emails": "nope"}, "invalidValue"),
    ]:
        answer = scim.hr.post("/Users", json=bad)
        assert answer.status_code == 400 and answer.json()["scimType"] == scim_type, answer.text
    # PostgreSQL stores no NUL and the columns have lengths: refused as input, never a 500.
    for bad in (
        user_body("nul\x00name"),
        user_body("ok1", displayName="a\x00b"),
        user_body("x" * 201),
        user_body("ok2", emails=[{"value": "a" * 400 + "@x.cn"}]),
    ):
        answer = scim.hr.post("/Users", json=bad)
        assert answer.status_code == 400 and answer.json()["scimType"] == "invalidValue"
    long_group = scim.hr.post("/Groups", json={"displayName": "g" * 201})
    assert long_group.status_code == 400
    assert scim.hr.get("/Users/a%00b").status_code in (400, 404)
    broken = scim.hr.post("/Users", content=b"{not json")
    assert broken.status_code == 400 and broken.json()["scimType"] == "invalidSyntax"
    for text in ["userName eq", 'userName zz "a"', '(userName eq "a"', 'a eq "b" junk']:
        answer = scim.hr.get("/Users", params={"filter": text})
        assert answer.status_code == 400 and answer.json()["scimType"] == "invalidFilter", text
    assert scim.hr.get("/Users/no-such-id").status_code == 404
    assert scim.hr.get("/Widgets").status_code == 404


def test_each_source_sees_and_changes_only_its_own(scim: Scim) -> None:
    mine = _create(scim.hr, "carol")
    assert scim.crm.get(f"/Users/{mine['id']}").status_code == 404
    assert scim.crm.get("/Users").json()["totalResults"] == 0
    change = {
        "schemas": [PATCH],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    assert scim.crm.patch(f"/Users/{mine['id']}", json=change).status_code == 404
    assert scim.crm.delete(f"/Users/{mine['id']}").status_code == 404
    assert not scim.services.identity.get_user_by_username("carol").disabled
    # Nor may it take over the person's userName with someone else (other link keys: a
    # different person; the same keys would link it to carol, core/directory/linking.py).
    other = user_body("carol", emails=[{"value": "another.carol@example.cn", "primary": True}])
    other[ENTERPRISE] = {"employeeNumber": "E-another-carol"}
    assert scim.crm.post("/Users", json=other).status_code == 409
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {HR_TOKEN}"}):
        answer = httpx.get(scim.url + "/Users", headers=headers)
        assert answer.status_code == 401 and answer.json()["status"] == "401"


def test_filters_sorting_paging_and_projection(scim: Scim) -> None:
    for name in ("dave", "erin", "frank", "grace"):
        _create(scim.hr, name)
    ids = {u["userName"]: u["id"] for u in scim.hr.get("/Users").json()["Resources"]}

    def names(**params: Any) -> list[str]:
        answer = scim.hr.get("/Users", params=params)
        assert answer.status_code == 200, answer.text
        return [u["userName"] for u in answer.json()["Resources"]]

    assert names(filter='userName eq "ERIN"') == ["erin"]
    # Equality on userName / id is looked up by index; the rest of the filter still applies,
    # and another source's people stay invisible.
    assert names(filter='userName eq "erin" and active eq false') == []
    assert names(filter='name.familyName eq "test" and userName eq "erin"') == ["erin"]
    assert names(filter='id eq "no-such-id"') == []
    assert names(filter='userName eq "nobody"') == []
    crm = scim.crm.get("/Users", params={"filter": 'userName eq "erin"'}).json()
    assert crm["totalResults"] == 0
    assert names(filter='userName sw "d" or userName ew "ce"', sortBy="userName") == [
        "dave",
        "grace",
    ]
    assert names(filter='name.givenName co "ran" and not (userName eq "x")') == ["frank"]
    assert names(filter='emails[type eq "work" and value co "grace"]') == ["grace"]
    assert names(filter=f'{ENTERPRISE}:employeeNumber eq "E-dave"') == ["dave"]
    assert names(filter=f'id eq "{ids["erin"]}"') == ["erin"]
    assert names(filter='meta.created gt "2000-01-01T00:00:00"', sortBy="userName")[0] == "dave"
    assert names(filter="title pr") == []
    assert names(filter='userName ne "dave"', sortBy="userName", sortOrder="descending") == [
        "grace",
        "frank",
        "erin",
    ]
    page = scim.hr.get("/Users", params={"sortBy": "userName", "startIndex": 2, "count": 2}).json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (4, 2, 2)
    assert [u["userName"] for u in page["Resources"]] == ["erin", "frank"]
    only = scim.hr.get("/Users", params={"attributes": "userName,name.givenName"}).json()
    assert set(only["Resources"][0]) == {"id", "schemas", "userName", "name"}
    assert set(only["Resources"][0]["name"]) == {"givenName"}
    without = scim.hr.get(f"/Users/{ids['dave']}", params={"excludedAttributes": "emails"})
    assert "emails" not in without.json() and without.json()["userName"] == "dave"
    searched = scim.hr.post("/Users/.search", json={"filter": 'userName eq "frank"'})
    assert [u["userName"] for u in searched.json()["Resources"]] == ["frank"]


def _patch(client: httpx.Client, path: str, *ops: dict[str, Any], **headers: str) -> httpx.Response:
    return client.patch(path, json={"schemas": [PATCH], "Operations": list(ops)}, headers=headers)


def test_patch_as_the_clouds_send_it(scim: Scim) -> None:
    user = _create(scim.hr, "heidi")
    path = f"/Users/{user['id']}"
    # Entra ID style: capitalised op, no path, string booleans, attribute paths as keys.
    answer = _patch(
        scim.hr,
        path,
        {
            "op": "Replace",
            "value": {
                "active": "False",
                "name.familyName": "Ng",
                f"{ENTERPRISE}:department": "Sales",
            },
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["active"] is False and body["name"]["familyName"] == "Ng"
    stored = scim.services.identity.get_user_by_username("heidi")
    assert stored.disabled and stored.disabled_reason == "scim: inactive"
    assert stored.department_path == "/Sales"
    # Value paths: change, add and remove values of a multi-valued attribute.
    answer = _patch(
        scim.hr,
        path,
        {"op": "replace", "path": 'emails[type eq "work"].value', "value": "h@example.cn"},
        {"op": "add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+86 138"},
        {"op": "add", "path": f"{ENTERPRISE}:manager", "value": "boss-id"},
        {"op": "replace", "path": "active", "value": True},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["emails"] == [{"value": "h@example.cn", "type": "work", "primary": True}]
    assert body["phoneNumbers"] == [{"type": "mobile", "value": "+86 138"}]
    assert body[ENTERPRISE]["manager"]["value"] == "boss-id"
    stored = scim.services.identity.get_user_by_username("heidi")
    assert not stored.disabled and (stored.email, stored.phone) == ("h@example.cn", "+86 138")
    answer = _patch(scim.hr, path, {"op": "remove", "path": 'phoneNumbers[type eq "mobile"]'})
    assert "phoneNumbers" not in answer.json() or answer.json()["phoneNumbers"] == []
    bad = _patch(scim.hr, path, {"op": "frobnicate", "path": "active", "value": True})
    assert bad.status_code == 400 and bad.json()["scimType"] == "invalidSyntax"
    bad = _patch(scim.hr, path, {"op": "add", "path": "emails[type eq", "value": 1})
    assert bad.status_code == 400 and bad.json()["scimType"] == "invalidPath"


def test_etags(scim: Scim) -> None:
    user = _create(scim.hr, "ivan")
    path, etag = f"/Users/{user['id']}", user["meta"]["version"]
    assert scim.hr.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert scim.hr.get(path, headers={"If-None-Match": 'W/"other"'}).status_code == 200
    op = {"op": "replace", "path": "displayName", "value": "Ivan"}
    stale = _patch(scim.hr, path, op, **{"If-Match": 'W/"stale"'})
    assert stale.status_code == 412
    fresh = _patch(scim.hr, path, op, **{"If-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert scim.hr.delete(path, headers={"If-Match": etag}).status_code == 412
    assert scim.hr.delete(path, headers={"If-Match": fresh.headers["etag"]}).status_code == 204


def test_groups_and_members(scim: Scim) -> None:
    a, b = _create(scim.hr, "judy"), _create(scim.hr, "ken")
    other = _create(scim.crm, "leo")
    made = scim.hr.post(
        "/Groups",
        json={
            "displayName": "Finance Approvers",
            "externalId": "g-1",
            "members": [{"value": a["id"]}],
        },
    )
    assert made.status_code == 201, made.text
    group = made.json()
    assert [m["value"] for m in group["members"]] == [a["id"]]
    assert group["members"][0]["display"] == "judy" and group["externalId"] == "g-1"
    assert scim.services.identity.user_groups(
        scim.services.identity.get_user_by_username("judy").id
    ) == ["Finance Approvers"]
    path = f"/Groups/{group['id']}"
    answer = _patch(scim.hr, path, {"op": "Add", "path": "members", "value": [{"value": b["id"]}]})
    assert {m["value"] for m in answer.json()["members"]} == {a["id"], b["id"]}
    answer = _patch(scim.hr, path, {"op": "remove", "path": f'members[value eq "{a["id"]}"]'})
    assert [m["value"] for m in answer.json()["members"]] == [b["id"]]
    # Entra ID removes members with a value list instead of a filter.
    answer = _patch(
        scim.hr, path, {"op": "Remove", "path": "members", "value": [{"value": b["id"]}]}
    )
    assert "members" not in answer.json()
    # A source cannot put another source's users into its groups, nor see the other's groups.
    foreign = _patch(
        scim.hr, path, {"op": "add", "path": "members", "value": [{"value": other["id"]}]}
    )
    assert foreign.status_code == 400 and foreign.json()["scimType"] == "invalidValue"
    assert scim.crm.get(path).status_code == 404
    listed = scim.hr.get("/Groups", params={"filter": 'displayName eq "finance approvers"'})
    assert listed.json()["totalResults"] == 1
    dup = scim.hr.post("/Groups", json={"displayName": "Finance Approvers"})
    assert dup.status_code == 409
    # A deleted user leaves the source's groups (the group never names a 404).
    _patch(scim.hr, path, {"op": "add", "path": "members", "value": [{"value": a["id"]}]})
    scim.hr.delete(f"/Users/{a['id']}")
    assert "members" not in scim.hr.get(path).json()
    assert scim.hr.delete(path).status_code == 204
    assert scim.hr.get(path).status_code == 404


def test_discovery(scim: Scim) -> None:
    config = scim.hr.get("/ServiceProviderConfig").json()
    assert config["patch"]["supported"] and config["etag"]["supported"]
    assert not config["bulk"]["supported"]
    types = scim.hr.get("/ResourceTypes").json()
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    assert scim.hr.get("/ResourceTypes/User").json()["schemaExtensions"][0]["schema"] == ENTERPRISE
    schemas = scim.hr.get("/Schemas").json()["Resources"]
    assert ENTERPRISE in {s["id"] for s in schemas}
    assert scim.hr.get(f"/Schemas/{ENTERPRISE}").json()["id"] == ENTERPRISE


def test_every_change_is_audited_with_source_and_request_id(scim: Scim) -> None:
    user = _create(scim.hr, "mallory")
    scim.hr.delete(f"/Users/{user['id']}", headers={"X-Request-ID": "req-scim-0001"})
    events = scim.services.audit_log.search(AuditFilter(event_types=("sync.change",)))
    mine = sorted((e for e in events if e.target == "user:mallory"), key=lambda e: e.seq)
    assert [e.details["kind"] for e in mine] == ["create", "delete"]
    assert all(e.details["source"] == "scim:hr" and e.details["request_id"] for e in mine)
    assert mine[1].details["request_id"] == "req-scim-0001"
    assert mine[1].details["changes"]["disabled_reason"] == [None, "scim: deleted"]


def test_disable_and_delete_sign_the_person_out_everywhere(scim: Scim) -> None:
    sessions = scim.services.sessions
    for name, change in [
        ("nina", lambda path: _patch(scim.hr, path, {"op": "replace", "value": {"active": False}})),
        ("oscar", lambda path: scim.hr.delete(path)),
    ]:
        made = _create(scim.hr, name)
        user = scim.services.identity.get_user_by_username(name)
        sessions.start(user, amr=["pwd"])
        assert len(sessions.active_for_user(user.id)) == 1
        # A change that does not disable keeps the session.
        _patch(scim.hr, f"/Users/{made['id']}", {"op": "replace", "path": "title", "value": "x"})
        assert len(sessions.active_for_user(user.id)) == 1
        assert change(f"/Users/{made['id']}").status_code in (200, 204)
        assert sessions.active_for_user(user.id) == []


def test_racing_creates_of_one_username_make_one_user(scim: Scim) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> int:
        with httpx.Client(base_url=scim.url, headers=dict(scim.hr.headers), timeout=10) as c:
            return c.post("/Users", json=user_body("peggy")).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(post, range(8)))
    assert codes == [201] + [409] * 7
    assert (
        scim.hr.get("/Users", params={"filter": 'userName eq "peggy"'}).json()["totalResults"] == 1
    )

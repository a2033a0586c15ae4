"""One identity per person, end to end: a real slapd (LDAP), the DingTalk fake and a SCIM
source over real HTTP describe overlapping people. After the three syncs each person is one
idhub user with three links and attributes by precedence; an ambiguous person is a conflict
that `idhub sync conflicts` shows and `idhub user link` resolves; a disable in a source that is
not authoritative drops only its link, one in the authoritative source disables and signs out.
On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, identity_conflicts, user_links, users
from idhub.core.scim.service import token_digest
from tests.conftest import REPO, TEST_SECRET_KEY
from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake, Member, company
from tests.scim_support import ENTERPRISE, MEDIA, USER
from tests.slapd import SOURCE_ENV, source_toml

pytestmark = pytest.mark.slapd

HR_TOKEN = "scim-merge-hr-" + "Qm4Xv8Lr2Tn6Wc1Zp9Ks3Hd7"
IDENTITY = """
[sync]
max_disable_ratio = 0.5

[identity]
department_source = "dingtalk:corp"

[identity.precedence]
display_name = ["dingtalk:corp", "ldap:corp"]
email = ["ldap:corp", "dingtalk:corp"]
phone = ["scim:hr"]
"""


def _rows(services: Any, query: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(query))


def _user(services: Any, username: str) -> Any:
    return _rows(services, select(users).where(users.c.username == username))[0]


def _links(services: Any, user_id: int) -> dict[str, str]:
    rows = _rows(
        services,
        select(user_links.c.source, user_links.c.external_id).where(
            user_links.c.user_id == user_id
        ),
    )
    return {r.source: r.external_id for r in rows}


def _scim_user(name: str, number: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "userName": name,
        "displayName": f"HR {name}",
        "emails": [{"value": f"{name}@hr.example.com", "primary": True}],
        "phoneNumbers": [{"value": f"+86 139 0000 {number[-4:]}", "primary": True}],
        ENTERPRISE: {"employeeNumber": number, "department": "HR"},
    }
    body.update(extra)
    return body


def test_three_sources_one_identity_per_person(
    make_slapd: Callable[..., Any],
    make_live_server: Callable[..., Any],
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    known_secrets: Any,
) -> None:
    known_secrets.add(APP_SECRET, HR_TOKEN)
    ldap = make_slapd(users=10, departments=3, groups=2, disabled_every=0)
    org = company(users=10, departments=3)
    # Nobody can tell which of two idhub users this one is: same email on both.
    org.members["dtamb"] = Member("dtamb", "模糊者", [1], email="Shared@Example.com")
    fake = DingTalkFake(org).start()
    try:
        toml = (
            source_toml(ldap)
            + f'\n[directory.dingtalk.corp]\nbase_url = "{fake.url}"\napp_key = "{APP_KEY}"\n'
            'app_secret_env = "DINGTALK_APP_SECRET"\nretry_base = 0.01\n'
            f'\n[directory.scim.hr]\ntoken_sha256 = "{token_digest(HR_TOKEN)}"\n' + IDENTITY
        )
        env = {**SOURCE_ENV, "DINGTALK_APP_SECRET": APP_SECRET}
        server = make_live_server(db_url, toml=toml, env=env)
        services = server.services
        _merge(services, server.url, ldap, fake, db_url, tmp_path, run_cli, monkeypatch, env)
    finally:
        fake.stop()


def _merge(
    services: Any,
    url: str,
    ldap: Any,
    fake: DingTalkFake,
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
) -> None:
    # 1. LDAP creates everyone (it is their creating, so by default authoritative, source).
    first = services.directory_sync("corp").run()
    assert first.counts["create"] == 10
    ldap_person = _user(services, "u000001")
    ldap_dept = ldap_person.department_id
    # Two local accounts share an email: a person matching it is ambiguous.
    for name in ("shared.a", "shared.b"):
        services.identity.create_user(username=name, email="shared@example.com")

    # 2. DingTalk: every member matches an LDAP person by employee number: linked, not created.
    report = services.oa_sync("dingtalk:corp").run()
    counts = report.counts
    assert counts["create"] == 0 and counts["link"] == 10, counts
    assert counts["conflicts"] == 1
    assert [c["external_id"] for c in report.plan.conflicts] == ["dtamb"]
    assert any("dtamb" in w and "idhub sync conflicts" in w for w in report.plan.warnings)
    assert len(_rows(services, select(users))) == 12  # 10 people + the two local accounts
    person = _user(services, "u000001")
    # display_name: DingTalk first; email: LDAP first; department: the department source.
    assert person.display_name == "员工000001"
    assert person.email == "u000001@example.com"
    assert person.phone == "+86 13800000001"  # unlisted for DingTalk: the creating source's
    assert person.department_id != ldap_dept
    assert person.sub == ldap_person.sub and person.id == ldap_person.id
    # DingTalk's own keys (the unionid sign-in with DingTalk matches on) reach the linked user.
    attributes = person.attributes if isinstance(person.attributes, dict) else {}
    assert attributes.get("unionid") == "u" + "dt000001"[::-1]
    linked = _rows(
        services,
        select(audit_events.c.target, audit_events.c.details).where(
            audit_events.c.event_type == "identity.linked"
        ),
    )
    assert len(linked) == 10 and all(json.loads(d)["key"] == "employee_number" for _, d in linked)

    # 3. SCIM: HR provisions two of them over HTTP; they link by employee number too.
    with httpx.Client(
        base_url=url + "/scim/v2",
        headers={"Authorization": f"Bearer {HR_TOKEN}", "Content-Type": MEDIA},
        timeout=10,
    ) as hr:
        made = hr.post("/Users", json=_scim_user("u000001", "E000001"))
        assert made.status_code == 201, made.text
        other = hr.post("/Users", json=_scim_user("hr-two", "E000002"))
        assert other.status_code == 201, other.text
        assert hr.get(f"/Users/{made.json()['id']}").json()["displayName"] == "HR u000001"
        assert hr.get("/Users").json()["totalResults"] == 2
        person = _user(services, "u000001")
        assert _links(services, person.id) == {
            "ldap:corp": person.external_id,
            "dingtalk:corp": "dt000001",
            "scim:hr": made.json()["id"],
        }
        assert person.phone == "+86 139 0000 0001"  # phone: SCIM first
        assert person.display_name == "员工000001" and person.email == "u000001@example.com"
        assert len(_rows(services, select(users))) == 12

        # Re-running the syncs changes nothing: precedence is stable.
        again = services.directory_sync("corp").run(full=True)
        assert again.counts["update"] == again.counts["move"] == 0, again.plan.as_dict()
        again = services.oa_sync("dingtalk:corp").run()
        assert again.counts["update"] == again.counts["move"] == 0, again.plan.as_dict()
        assert _user(services, "u000001").phone == "+86 139 0000 0001"

        # SCIM DELETE from a source that is not authoritative: only its link goes.
        gone = hr.delete(f"/Users/{other.json()['id']}")
        assert gone.status_code == 204
        assert hr.get(f"/Users/{other.json()['id']}").status_code == 404
        two = _user(services, "u000002")
        assert not two.disabled and "scim:hr" not in _links(services, two.id)

    # 4. The conflict, through the CLI, resolved by an admin.
    for name, value in {
        **env,
        "IDHUB_DATABASE_URL": db_url,
        "IDHUB_SECRET_KEY": TEST_SECRET_KEY,
        "IDHUB_VAR_DIR": str(tmp_path / "var"),
        "IDHUB_POLICY_DIR": str(REPO / "policies"),
    }.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "idhub.toml"
    shown = run_cli("sync", "conflicts", "--json", config=config)
    assert shown.code == 0, shown.err
    (conflict,) = json.loads(shown.out)
    assert conflict["source"] == "dingtalk:corp" and conflict["external_id"] == "dtamb"
    assert conflict["key"] == "email"
    assert sorted(conflict["candidate_users"]) == ["shared.a", "shared.b"]
    text = run_cli("sync", "conflicts", config=config)
    assert "dtamb" in text.out and "shared.a, shared.b" in text.out
    refused = run_cli("user", "link", "u000004", "dingtalk:corp", "dt000005", config=config)
    assert refused.code != 0 and "already linked to" in refused.err
    refused = run_cli("user", "link", "nobody", "dingtalk:corp", "dtamb", config=config)
    assert refused.code != 0 and "no user named 'nobody'" in refused.err
    refused = run_cli("user", "link", "shared.a", "ldap:nope", "x", config=config)
    assert refused.code != 0 and "no source 'ldap:nope'" in refused.err
    refused = run_cli("user", "unlink", "u000001", "ldap:corp", config=config)
    assert refused.code != 0 and "created u000001" in refused.err
    done = run_cli("user", "link", "shared.a", "dingtalk:corp", "dtamb", config=config)
    assert done.code == 0, done.err
    assert "no open identity conflicts" in run_cli("sync", "conflicts", config=config).out
    resolved = _rows(services, select(identity_conflicts))
    assert len(resolved) == 1 and resolved[0].resolved_by == "admin:cli"
    # The next sync updates the person through the link.
    services.oa_sync("dingtalk:corp").run()
    shared = _user(services, "shared.a")
    assert shared.display_name == "模糊者" and shared.disabled is False
    # The admin-made account's own word is kept on a `local` link.
    assert _links(services, shared.id) == {"dingtalk:corp": "dtamb", "local": str(shared.id)}

    # 5. Gone from DingTalk (a leaver: DingTalk lists only current members), which is not
    # authoritative for LDAP's people: only the link is dropped.
    del fake.org.members["dt000003"]
    report = services.oa_sync("dingtalk:corp").run()
    assert report.counts.get("unlink") == 1, report.plan.as_dict()
    assert report.counts["disable"] == 0
    three = _user(services, "u000003")
    assert not three.disabled and "dingtalk:corp" not in _links(services, three.id)
    unlinked = _rows(
        services,
        select(audit_events.c.target).where(audit_events.c.event_type == "identity.unlinked"),
    )
    assert ("user:u000003",) in [tuple(r) for r in unlinked]
    report = services.oa_sync("dingtalk:corp").run()
    assert report.counts.get("link", 0) == report.counts.get("unlink", 0) == 0

    # 6. Disabled in LDAP, the authoritative source: disabled in idhub and signed out.
    one = services.identity.get_user_by_username("u000001")
    _cookie, session = services.sessions.start(one, amr=["pwd"])
    time.sleep(1.05 - (time.time() % 1.0))
    admin = ldap.admin()
    dn = next(p.dn for p in ldap.company.people if p.uid == "u000001")
    admin.modify(dn, {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, ["000001010000Z"])]})
    admin.unbind()
    report = services.directory_sync("corp").run()
    assert report.counts["disable"] == 1 and report.counts["sessions_ended"] == 1
    assert _user(services, "u000001").disabled
    ended = services.sessions.get(session.sid)
    assert ended is not None and ended.ended_at is not None

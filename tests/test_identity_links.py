"""One identity per person: the matching, precedence and authority rules (pure), the
`[identity]` settings (file and line on mistakes), and the link store on SQLite and
PostgreSQL (migration of existing users, conflicts, admin links, the sync engine's linking
against the DingTalk fake, SCIM's over real HTTP)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.adapters.db import audit_events, departments, identity_conflicts, user_links, users
from idhub.bootstrap import Services
from idhub.config import DatabaseSettings, Settings, load_settings
from idhub.core.audit import Actor
from idhub.core.directory.linking import (
    Candidate,
    LinkRules,
    build_index,
    canonical_email,
    canonical_employee_number,
    canonical_keys,
    canonical_mobile,
    check_authoritative,
    match_person,
    mobile_spellings,
    ranking,
    resolve,
)
from idhub.errors import ConfigError, Conflict, NotFound
from tests.conftest import PG_SERVER
from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake, Member, company
from tests.scim_support import CRM_TOKEN, ENTERPRISE, HR_TOKEN, Scim, scim_clients, user_body

ADMIN = Actor("admin", "tester")

# ------------------------------------------------------------------ canonical values


def test_canonical_values() -> None:
    assert canonical_email("  Zhang.San@Example.COM ") == "zhang.san@example.com"
    assert canonical_email("not-an-address") is None and canonical_email(None) is None
    one = "8613800138000"
    for written in ("+86 138-0013-8000", "0086 13800138000", "13800138000", "86 13800138000"):
        assert canonical_mobile(written) == one, written
    assert canonical_mobile("+1 (415) 555-0100") == "14155550100"
    assert canonical_mobile("12345") is None and canonical_mobile("") is None
    assert canonical_mobile("13800138000", country_code="852") == "85213800138000"
    # SCIM's indexed look-up asks for the usual spellings, each the same number.
    spellings = mobile_spellings(one)
    assert "138-0013-8000" in spellings and "+86 13800138000" in spellings
    assert {canonical_mobile(x) for x in spellings} == {one}
    assert canonical_employee_number("  E-001 ") == "E-001"
    assert canonical_employee_number("   ") is None
    assert canonical_keys(email="a@b.cn", phone=None, employee_id=" 7 ") == {
        "employee_number": "7",
        "email": "a@b.cn",
    }


# ------------------------------------------------------------------ matching


def _index(*people: tuple[int, dict[str, str], set[str]]) -> Any:
    return build_index((uid, keys, frozenset(src)) for uid, keys, src in people)


def test_match_by_key_order_and_never_guess() -> None:
    order = ("employee_number", "email", "mobile")
    index = _index(
        (1, {"employee_number": "E1", "email": "a@x.cn"}, {"ldap:corp"}),
        (2, {"email": "shared@x.cn"}, set()),
        (3, {"email": "shared@x.cn"}, {"ldap:corp"}),
        (4, {"mobile": "8613800000004"}, {"dingtalk:corp"}),
    )
    src = "dingtalk:corp"
    found = match_person({"employee_number": "E1"}, index, source=src, order=order)
    assert (found.outcome, found.user_id, found.key) == ("link", 1, "employee_number")
    # The first key with candidates decides; a later key is never used to break a tie.
    found = match_person(
        {"employee_number": "E9", "email": "shared@x.cn", "mobile": "8613800000004"},
        index,
        source="scim:hr",
        order=order,
    )
    assert (found.outcome, found.key, found.candidates) == ("conflict", "email", (2, 3))
    # One candidate, but already linked to another person of this very source.
    found = match_person({"mobile": "8613800000004"}, index, source=src, order=order)
    assert found.outcome == "conflict" and "already linked" in found.reason
    assert match_person({"email": "nobody@x.cn"}, index, source=src, order=order).outcome == (
        "none"
    )
    # Keys not configured are not looked at.
    found = match_person({"email": "a@x.cn"}, index, source=src, order=("employee_number",))
    assert found.outcome == "none"
    assert Candidate(1, frozenset()).sources == frozenset()


# ------------------------------------------------------------------ precedence and authority


def test_precedence_ranks_listed_then_creator_then_by_name() -> None:
    rules = LinkRules(precedence={"display_name": ("dingtalk:corp", "ldap:corp")})
    sources = ["scim:hr", "ldap:corp", "dingtalk:corp", "local"]
    assert ranking(rules, "display_name", sources, "scim:hr") == [
        "dingtalk:corp",
        "ldap:corp",
        "scim:hr",
        "local",
    ]
    # Unlisted attribute: the creating source first, then the rest by name.
    assert ranking(rules, "email", sources, "scim:hr") == [
        "scim:hr",
        "dingtalk:corp",
        "ldap:corp",
        "local",
    ]
    said = {"ldap:corp": "张三 (LDAP)", "dingtalk:corp": "张三"}
    assert resolve(rules, "display_name", said, "ldap:corp") == "张三"
    # A ranked source that provides nothing gives way to the next one.
    said = {"ldap:corp": "张三 (LDAP)", "dingtalk:corp": None}
    assert resolve(rules, "display_name", said, "ldap:corp") == "张三 (LDAP)"
    assert resolve(rules, "phone", {"ldap:corp": None, "dingtalk:corp": ""}, "ldap:corp") is None


def test_department_source_has_the_final_word() -> None:
    rules = LinkRules(department_source="dingtalk:corp", precedence={"department": ("ldap:corp",)})
    said = {"ldap:corp": "/总部/财务部", "dingtalk:corp": "/示例集团/财务"}
    assert resolve(rules, "department", said, "ldap:corp") == "/示例集团/财务"
    # Even "no department": the department source placed the person nowhere.
    said = {"ldap:corp": "/总部/财务部", "dingtalk:corp": None}
    assert resolve(rules, "department", said, "ldap:corp") is None
    # Not linked to the department source: precedence as for any attribute.
    assert resolve(rules, "department", {"ldap:corp": "/总部"}, "ldap:corp") == "/总部"


def test_authority_to_disable() -> None:
    default = LinkRules()
    both = ["ldap:corp", "dingtalk:corp"]
    assert check_authoritative(default, "ldap:corp", creator="ldap:corp", linked=both)
    assert not check_authoritative(default, "dingtalk:corp", creator="ldap:corp", linked=both)
    listed = LinkRules(authoritative=("dingtalk:corp",))
    assert check_authoritative(listed, "dingtalk:corp", creator="ldap:corp", linked=both)
    assert not check_authoritative(listed, "ldap:corp", creator="ldap:corp", linked=both)
    # The last link always may: nobody else is left to speak for the person.
    assert check_authoritative(listed, "ldap:corp", creator="ldap:corp", linked=["ldap:corp"])


# ------------------------------------------------------------------ settings


def _load(tmp_path: Path, toml: str) -> Settings:
    path = tmp_path / "idhub.toml"
    path.write_text(toml, encoding="utf-8")
    return load_settings(path, env={}, cwd=tmp_path)


def test_identity_settings(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        '[identity]\nlink_keys = ["email", "mobile"]\ndepartment_source = "dingtalk:corp"\n'
        'authoritative = ["ldap:corp", "scim:hr"]\ncountry_code = "852"\n\n'
        '[identity.precedence]\ndisplay_name = ["dingtalk:corp", "ldap:corp"]\n'
        'email = ["ldap:corp"]\n',
    )
    rules = settings.identity
    assert rules.link_keys == ("email", "mobile")
    assert rules.department_source == "dingtalk:corp"
    assert rules.authoritative == ("ldap:corp", "scim:hr")
    assert rules.country_code == "852"
    assert rules.precedence == {
        "display_name": ("dingtalk:corp", "ldap:corp"),
        "email": ("ldap:corp",),
    }
    assert _load(tmp_path, "").identity == LinkRules()


@pytest.mark.parametrize(
    ("toml", "message", "line"),
    [
        ('[identity]\nlink_keys = ["email", "shoe_size"]\n', "'shoe_size' is not a link key", 2),
        ('[identity]\nlink_keys = ["email", "email"]\n', "lists a key twice", 2),
        ("[identity]\nlink_keys = 3\n", "must be a list of strings", 2),
        ('[identity]\n\ndepartment_source = "corp"\n', "'corp' is not a source name", 3),
        ('[identity]\nauthoritative = ["ldap:"]\n', "'ldap:' is not a source name", 2),
        ('[identity]\ncountry_code = "+86"\n', "country_code must be the digits", 2),
        ('[identity]\nlink_key = ["email"]\n', "unknown key 'link_key'", 2),
        (
            '[identity]\n[identity.precedence]\nshoe_size = ["ldap:corp"]\n',
            "'shoe_size' is not an attribute",
            3,
        ),
        ('[identity.precedence]\nemail = ["ldap corp"]\n', "is not a source name", 2),
        ('identity = "yes"\n', "[identity] must be a table", None),
    ],
)
def test_bad_identity_settings_name_file_and_line(
    tmp_path: Path, toml: str, message: str, line: int | None
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, toml)
    assert message in str(info.value)
    if line is not None:
        assert info.value.location == f"{tmp_path / 'idhub.toml'}:{line}"


# ------------------------------------------------------------------ migration


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"idhub_links_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migration_makes_each_source_user_its_creating_link(empty_db_url: str) -> None:
    from alembic import command

    from idhub.adapters.database import _alembic_config

    engine = create_db_engine(DatabaseSettings(url=empty_db_url))
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0013")
    with engine.begin() as conn:
        for n, (source, ext) in enumerate(
            [("ldap:corp", "uuid-1"), ("scim:hr", "s-2"), ("local", None)]
        ):
            conn.execute(
                users.insert().values(
                    sub=f"sub{n}",
                    username=f"user{n}",
                    display_name="",
                    source=source,
                    external_id=ext,
                    disabled=False,
                    failed_logins=0,
                    attributes={},
                    created_at=100.0 + n,
                    updated_at=100.0 + n,
                )
            )
    apply_migrations(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                users.c.username,
                user_links.c.source,
                user_links.c.external_id,
                user_links.c.linked_by,
                user_links.c.linked_at,
            )
            .join(users, users.c.id == user_links.c.user_id)
            .order_by(users.c.username)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("user0", "ldap:corp", "uuid-1", "created", 100.0),
        ("user1", "scim:hr", "s-2", "created", 101.0),
    ]
    engine.dispose()


# ------------------------------------------------------------------ the sync engine's linking


def _dingtalk(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    extra: str = "",
) -> Services:
    toml = (
        f'[directory.dingtalk.corp]\nbase_url = "{fake.url}"\napp_key = "{APP_KEY}"\n'
        'app_secret_env = "DINGTALK_APP_SECRET"\nretry_base = 0.01\n' + extra
    )
    services = make_services(
        make_settings(db_url, toml=toml, env={"DINGTALK_APP_SECRET": APP_SECRET})
    )
    services.migrate()
    return services


@pytest.fixture
def fake(known_secrets: Any) -> Iterator[DingTalkFake]:
    known_secrets.add(APP_SECRET)
    org = company(users=8, departments=3)
    server = DingTalkFake(org).start()
    yield server
    server.stop()


def _rows(services: Services, query: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(query))


def test_sync_links_local_people_records_conflicts_and_admin_links(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> None:
    services = _dingtalk(fake, make_settings, make_services, db_url)
    identity = services.identity
    # A local account with the same mobile, written differently: linked, not duplicated.
    local = identity.create_user(username="wang.local", phone="+86 138-0000-0001")
    # Two members of this run with one employee number: the second is not guessed.
    fake.org.members["dtdup"] = Member("dtdup", "重复者", [1], job_number="E000002")
    dry = services.oa_sync("dingtalk:corp").run(dry_run=True)
    assert dry.counts["link"] == 1 and dry.counts["conflicts"] == 1
    assert _rows(services, select(identity_conflicts)) == [], "a dry run records nothing"

    report = services.oa_sync("dingtalk:corp").run()
    assert report.counts["link"] == 1 and report.counts["create"] == 7
    (found,) = report.plan.conflicts
    assert found["external_id"] in ("dt000002", "dtdup") and found["key"] == "employee_number"
    linked = identity.get_user(local.id)
    assert linked is not None and linked.display_name == "员工000001"
    assert linked.username == "wang.local", "the creating source keeps the username"
    assert {r.source for r in _rows(services, select(user_links))} == {"dingtalk:corp", "local"}
    assert len(_rows(services, select(users))) == 8

    # What the admin never entered follows DingTalk; what the admin edits afterwards sticks.
    fake.org.members["dt000001"].name = "王新名"
    first = _rows(services, select(identity_conflicts))
    services.oa_sync("dingtalk:corp").run()
    assert identity.get_user(local.id).display_name == "王新名"  # type: ignore[union-attr]
    identity.update_user(local.id, display_name="王 (admin)")
    services.oa_sync("dingtalk:corp").run()
    assert identity.get_user(local.id).display_name == "王 (admin)"  # type: ignore[union-attr]

    # The same conflict seen again stays one open conflict, seen later.
    again = _rows(services, select(identity_conflicts))
    assert len(again) == 1 and again[0].first_seen == first[0].first_seen
    assert again[0].last_seen >= first[0].last_seen and again[0].resolved_at is None

    admin = services.link_admin
    # In the first run the other holder of the number was new (no idhub user to name yet);
    # by now it is one, and already linked to DingTalk.
    assert found["candidates"] == [] and "in this run" in found["reason"]
    (open_one,) = admin.conflicts()
    other = "dtdup" if found["external_id"] == "dt000002" else "dt000002"
    assert open_one["candidate_users"] == [other] and "already linked" in open_one["reason"]
    identity.create_user(username="dup.person", employee_id="X-1")
    with pytest.raises(NotFound, match="no user named 'ghost'"):
        admin.link("ghost", "dingtalk:corp", "dtdup", actor=ADMIN)
    with pytest.raises(Conflict, match=r"already linked to wang\.local"):
        admin.link("dup.person", "dingtalk:corp", "dt000001", actor=ADMIN)
    admin.link("dup.person", "dingtalk:corp", found["external_id"], actor=ADMIN)
    assert admin.conflicts() == []
    with pytest.raises(Conflict, match="unlink it first"):
        admin.link("dup.person", "dingtalk:corp", "dt-not-yet-seen", actor=ADMIN)
    events = _rows(
        services,
        select(audit_events.c.event_type, audit_events.c.target).where(
            audit_events.c.event_type.like("identity.%")
        ),
    )
    kinds = [(e, t) for e, t in events]
    assert ("identity.conflict", f"user:{found['username']}") in kinds
    assert ("identity.linked", "user:dup.person") in kinds
    # The next sync updates the user through the admin's link.
    services.oa_sync("dingtalk:corp").run()
    person = identity.get_user_by_username("dup.person")
    # Unlisted attributes: the creating source's (the admin's) word first, then DingTalk's.
    assert person is not None and person.employee_id == "X-1"
    assert person.display_name in ("员工000002", "重复者")
    # Unlinking: the local account's only link may go (it is not source-owned)...
    admin.unlink("wang.local", "dingtalk:corp", actor=ADMIN)
    with pytest.raises(NotFound, match="has no link to dingtalk:corp"):
        admin.unlink("wang.local", "dingtalk:corp", actor=ADMIN)
    # ...a DingTalk-made person's only link may not.
    with pytest.raises(Conflict, match="only source of dt000003"):
        admin.unlink("dt000003", "dingtalk:corp", actor=ADMIN)


def test_another_department_source_leaves_the_tree_alone(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> None:
    services = _dingtalk(
        fake, make_settings, make_services, db_url, '\n[identity]\ndepartment_source = "ldap:hq"\n'
    )
    report = services.oa_sync("dingtalk:corp").run()
    assert report.counts["create"] == 8
    # Its people keep their departments (they only have this source), but the tree's
    # heads and order are the department source's business.
    paths = {r.path for r in _rows(services, select(departments))}
    assert "/示例集团/部门0002" in paths
    assert all(
        r.manager_user_id is None and r.sort_order is None
        for r in _rows(services, select(departments))
    )


# ------------------------------------------------------------------ SCIM


@pytest.fixture
def scim(make_live_server: Callable[..., Any], db_url: str, known_secrets: Any) -> Iterator[Scim]:
    known_secrets.add(HR_TOKEN, CRM_TOKEN)
    yield from scim_clients(make_live_server, db_url)


def test_scim_links_by_key_refuses_ambiguity_and_drops_only_its_link(scim: Scim) -> None:
    identity = scim.services.identity
    hr = scim.hr.post("/Users", json=user_body("liu"))
    assert hr.status_code == 201
    # CRM presents the same person (same employee number) under another userName: linked.
    crm = scim.crm.post(
        "/Users",
        json=user_body(
            "liu.crm",
            displayName="Liu from CRM",
            emails=[{"value": "x@crm.cn"}],
            **{ENTERPRISE: {"employeeNumber": "E-liu"}},
        ),
    )
    assert crm.status_code == 201, crm.text
    person = identity.get_user_by_username("liu")
    assert person is not None and identity.get_user_by_username("liu.crm") is None
    assert person.display_name == "Liu Test", "the creating source's name (no precedence set)"
    assert crm.json()["userName"] == "liu.crm" and crm.json()["displayName"] == "Liu from CRM"
    # What clouds ask before each create finds the linked person by the source's userName.
    looked = scim.crm.get("/Users", params={"filter": 'userName eq "Liu.CRM"'}).json()
    assert [r["id"] for r in looked["Resources"]] == [crm.json()["id"]]
    assert (
        scim.crm.get("/Users", params={"filter": 'userName eq "liu"'}).json()["totalResults"] == 0
    )
    # CRM (not authoritative) says inactive: recorded on its link, the person stays enabled.
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    assert scim.crm.patch(f"/Users/{crm.json()['id']}", json=patch).status_code == 200
    assert not identity.get_user_by_username("liu").disabled  # type: ignore[union-attr]
    # CRM deletes: its link goes; HR still has the person.
    assert scim.crm.delete(f"/Users/{crm.json()['id']}").status_code == 204
    assert scim.crm.get(f"/Users/{crm.json()['id']}").status_code == 404
    assert scim.hr.get(f"/Users/{hr.json()['id']}").status_code == 200
    assert not identity.get_user_by_username("liu").disabled  # type: ignore[union-attr]

    # Two idhub users with one email: refused (409) and left for an admin.
    identity.create_user(username="twin.a", email="twin@example.cn")
    identity.create_user(username="twin.b", email="twin@example.cn")
    body = user_body("twin", emails=[{"value": "TWIN@example.cn"}])
    body.pop(ENTERPRISE)
    answer = scim.hr.post("/Users", json=body)
    assert answer.status_code == 409 and answer.json()["scimType"] == "uniqueness"
    assert "idhub sync conflicts" in answer.json()["detail"]
    # A retry is the same conflict (one row, one reserved id), not a new one.
    assert scim.hr.post("/Users", json=body).status_code == 409
    (conflict,) = scim.services.link_admin.conflicts()
    assert conflict["source"] == "scim:hr" and sorted(conflict["candidate_users"]) == [
        "twin.a",
        "twin.b",
    ]
    assert (
        scim.hr.get("/Users", params={"filter": 'userName eq "twin"'}).json()["totalResults"] == 0
    )
    # The admin decides; the client's next POST fills the reserved link: no new user.
    admin = Actor("admin", "tester")
    scim.services.link_admin.link("twin.b", "scim:hr", conflict["external_id"], actor=admin)
    assert scim.hr.get(f"/Users/{conflict['external_id']}").status_code == 404  # no doc yet
    again = scim.hr.post("/Users", json=body)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == conflict["external_id"] and again.json()["userName"] == "twin"
    assert identity.get_user_by_username("twin") is None
    twin = identity.get_user_by_username("twin.b")
    assert twin is not None and twin.display_name == "Twin Test"
    assert scim.services.link_admin.conflicts() == []

    # Another source linking to a SCIM-made person leaves HR's document where it was.
    assert (
        scim.crm.post(
            "/Users",
            json=user_body("liu.other", emails=[{"value": "liu@example.cn"}], **{ENTERPRISE: {}}),
        ).status_code
        == 201
    )
    mine = scim.hr.get(f"/Users/{hr.json()['id']}")
    assert mine.status_code == 200 and mine.json()["userName"] == "liu"
    renamed = scim.hr.put(f"/Users/{hr.json()['id']}", json=user_body("liu", displayName="Liu W"))
    assert renamed.status_code == 200 and renamed.json()["displayName"] == "Liu W"
    assert identity.get_user_by_username("liu").display_name == "Liu W"  # type: ignore[union-attr]


# ------------------------------------------------------------------ disabled and authority


def test_disables_follow_the_authoritative_source(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: Any,
) -> None:
    """DingTalk creates everyone; WeCom (the same people, by email) links to them. A WeCom
    leaver drops only its link, unless WeCom is configured authoritative; a person WeCom
    presents as disabled is never linked."""
    from tests.wecom_fake import CORP_ID, CORP_SECRET, WeComFake
    from tests.wecom_fake import company as wecom_company

    known_secrets.add(CORP_SECRET)
    wecom = WeComFake(wecom_company(users=8, departments=3)).start()
    try:
        for member in wecom.org.members.values():
            member.job_number = None  # WeCom has no employee number: email decides
        wecom.org.status["dt000005"] = 2  # disabled in WeCom before it ever linked

        def services_with(extra: str) -> Services:
            toml = (
                f'[directory.dingtalk.corp]\nbase_url = "{fake.url}"\napp_key = "{APP_KEY}"\n'
                'app_secret_env = "DINGTALK_APP_SECRET"\nretry_base = 0.01\n'
                f'[directory.wecom.corp]\nbase_url = "{wecom.url}"\ncorp_id = "{CORP_ID}"\n'
                'corp_secret_env = "WECOM_SECRET"\nretry_base = 0.01\n'
                "[sync]\nmax_disable_ratio = 0.9\n" + extra
            )
            env = {"DINGTALK_APP_SECRET": APP_SECRET, "WECOM_SECRET": CORP_SECRET}
            made = make_services(make_settings(db_url, toml=toml, env=env))
            made.migrate()
            return made

        services = services_with("")
        assert services.oa_sync("dingtalk:corp").run().counts["create"] == 8
        report = services.oa_sync("wecom:corp").run()
        assert report.counts["link"] == 7 and report.counts["create"] == 0, report.counts
        assert any("dt000005" in w and "not linked" in w for w in report.plan.warnings)
        sources = {
            (r.external_id, r.source)
            for r in _rows(services, select(user_links.c.external_id, user_links.c.source))
        }
        assert ("dt000005", "wecom:corp") not in sources and ("dt000004", "wecom:corp") in sources

        # Resigned in WeCom, which is not authoritative: only the link goes.
        wecom.org.status["dt000004"] = 5
        report = services.oa_sync("wecom:corp").run()
        assert report.counts.get("unlink") == 1 and report.counts["disable"] == 0
        assert not services.identity.get_user_by_username("dt000004").disabled  # type: ignore[union-attr]

        # With WeCom authoritative, its disable disables (and DingTalk still lists them).
        services = services_with('[identity]\nauthoritative = ["wecom:corp"]\n')
        wecom.org.status["dt000003"] = 2
        report = services.oa_sync("wecom:corp").run()
        assert report.counts["disable"] == 1, report.counts
        assert services.identity.get_user_by_username("dt000003").disabled  # type: ignore[union-attr]
        # DingTalk, no longer authoritative for the people WeCom is linked to, cannot undo it.
        report = services.oa_sync("dingtalk:corp").run()
        assert report.counts["enable"] == 0
        assert services.identity.get_user_by_username("dt000003").disabled  # type: ignore[union-attr]
    finally:
        wecom.stop()

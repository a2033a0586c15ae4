"""DingTalk contacts sync against a local fake of DingTalk's server API (tests/dingtalk_fake.py),
into a real SQLite and PostgreSQL store: the tree, members, leaders as managers, leavers, the
brake, and DingTalk's realities (errcode in 200 bodies, gateway sub_codes, early token expiry,
rate limits, system busy and 5xx, short pages, a department listing that keeps failing)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, departments, sync_runs, users
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import Actor
from idhub.errors import ConfigError, DirectoryError, SyncAborted
from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake, Member, company

ENV = {"DINGTALK_APP_SECRET": APP_SECRET}


def source_toml(fake: DingTalkFake, extra: str = "") -> str:
    return (
        f'[directory.dingtalk.corp]\nbase_url = "{fake.url}"\napp_key = "{APP_KEY}"\n'
        'app_secret_env = "DINGTALK_APP_SECRET"\nretry_base = 0.01\nrate_limit_wait = 2\n'
        f"{extra}"
    )


@pytest.fixture
def fake() -> Iterator[DingTalkFake]:
    server = DingTalkFake(company(users=30, departments=6)).start()
    yield server
    server.stop()


def _make(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    url: str,
    known_secrets: Any,
) -> Services:
    known_secrets.add(APP_SECRET)
    services = make_services(make_settings(url, toml=source_toml(fake), env=ENV))
    services.migrate()
    return services


@pytest.fixture
def corp_db(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: Any,
) -> Services:
    """On SQLite and PostgreSQL: for what the store decides (writes, leavers, the brake)."""
    return _make(fake, make_settings, make_services, db_url, known_secrets)


@pytest.fixture
def corp(
    fake: DingTalkFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    known_secrets: Any,
) -> Services:
    """On SQLite: for the API client's behaviour, which no database changes."""
    return _make(fake, make_settings, make_services, sqlite_db_url, known_secrets)


def _rows(services: Services, query: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(query))


def _users(services: Services) -> dict[str, Any]:
    return {r.username: r for r in _rows(services, select(users))}


def _sync(services: Services, **kwargs: Any) -> Any:
    return services.oa_sync("dingtalk:corp").run(**kwargs)


def test_first_sync_builds_the_tree_members_and_managers(
    corp_db: Services, fake: DingTalkFake
) -> None:
    report = _sync(corp_db)
    assert report.status == "succeeded" and report.counts["create"] == 30
    people = _users(corp_db)
    assert len(people) == 30
    one = people["dt000007"]
    assert one.source == "dingtalk:corp" and one.external_id == "dt000007"
    assert one.email == "dt000007@example.com" and one.phone == "13800000007"
    assert one.employee_id == "E000007" and one.display_name == "员工000007"
    paths = {r.path: r for r in _rows(corp_db, select(departments))}
    assert {"/示例集团", "/示例集团/部门0002", "/示例集团/部门0002/部门0004"} <= set(paths)
    by_id = {r.id: r.username for r in people.values()}
    # The member flagged leader in a department heads it (dt000003 leads department 4).
    assert by_id[paths["/示例集团/部门0002/部门0004"].manager_user_id] == "dt000003"
    assert paths["/示例集团"].manager_user_id is not None
    # department/get's order among siblings is kept (the fake gives department i order i).
    assert paths["/示例集团/部门0002/部门0004"].sort_order == 4
    # One token for the run; one listsub per department, one user/list page per department.
    assert fake.calls["gettoken"] == 1
    assert fake.calls["topapi/v2/department/listsub"] == 6
    assert fake.calls["topapi/v2/department/get"] == 6
    assert fake.calls["topapi/v2/user/list"] == 6
    events = _rows(corp_db, select(audit_events.c.event_type, audit_events.c.details))
    assert sum(1 for e in events if e.event_type == "sync.change") >= 30
    assert APP_SECRET not in json.dumps([e.details for e in events], default=str)

    again = _sync(corp_db)
    assert again.counts["create"] == again.counts["update"] == 0
    assert again.counts["departments_reordered"] == 0

    fake.org.depts[4].order = 40
    moved = _sync(corp_db)
    assert moved.counts["departments_reordered"] == 1
    assert [
        r.sort_order for r in _rows(corp_db, select(departments)) if r.path.endswith("0004")
    ] == [40]


def test_a_person_in_two_departments_is_one_user(corp: Services, fake: DingTalkFake) -> None:
    fake.org.members["dt000010"].depts = [3, 5]
    fake.org.members["dt000010"].leader_in = {5}
    _sync(corp)
    people = _users(corp)
    assert len(people) == 30
    paths = {r.id: r.path for r in _rows(corp, select(departments))}
    assert paths[people["dt000010"].department_id] == "/示例集团/部门0003"


def test_mobile_and_email_may_be_absent(corp: Services, fake: DingTalkFake) -> None:
    fake.org.members["dt000011"] = Member("dt000011", "无邮箱", [2])
    _sync(corp)
    person = _users(corp)["dt000011"]
    assert person.email is None and person.phone is None and person.employee_id is None


def test_leavers_are_disabled_and_the_brake_holds_a_mass_disable(
    corp_db: Services, fake: DingTalkFake
) -> None:
    _sync(corp_db)
    del fake.org.members["dt000020"]
    report = _sync(corp_db)
    assert report.counts["disable"] == 1
    assert _users(corp_db)["dt000020"].disabled

    # A listing that silently returns far fewer members: the brake stops it, nothing changes.
    for userid in [f"dt{n:06d}" for n in range(21, 30)]:
        del fake.org.members[userid]
    with pytest.raises(SyncAborted):
        _sync(corp_db)
    assert not any(u.disabled for n, u in _users(corp_db).items() if n != "dt000020")
    forced = _sync(corp_db, force=True)
    assert forced.counts["disable"] == 9


def test_errcode_in_200_bodies_busy_and_5xx_are_retried(corp: Services, fake: DingTalkFake) -> None:
    fake.script("topapi/v2/user/list", [-1, ("http", 502), ("http", 503), -1])
    fake.script("topapi/v2/department/listsub", [("http", 504)])
    report = _sync(corp)
    assert report.status == "succeeded" and report.counts["create"] == 30
    assert fake.calls["topapi/v2/user/list"] == 6 + 4


def test_busy_without_end_fails_the_run_after_bounded_tries(
    corp: Services, fake: DingTalkFake
) -> None:
    fake.fail_always["topapi/v2/user/list"] = {"errcode": -1, "errmsg": "系统繁忙"}
    with pytest.raises(DirectoryError, match="gave up after 5 tries"):
        _sync(corp)
    assert fake.calls["topapi/v2/user/list"] == 5
    assert _users(corp) == {}


def test_an_early_expired_token_is_refreshed_once_and_the_call_retried(
    corp: Services, fake: DingTalkFake
) -> None:
    fake.script("topapi/v2/user/list", [40014])
    fake.script("topapi/v2/department/listsub", [("sub", "40014")])
    report = _sync(corp)
    assert report.counts["create"] == 30
    assert fake.calls["gettoken"] == 3

    # A token that stays refused after a refresh is an error, not a loop.
    fake.fail_always["topapi/v2/department/get"] = {"errcode": 40014, "errmsg": "invalid"}
    with pytest.raises(DirectoryError, match="errcode 40014"):
        _sync(corp)


def test_rate_limits_are_waited_out_within_the_run(corp: Services, fake: DingTalkFake) -> None:
    fake.script("topapi/v2/user/list", [90018, ("sub", "90002"), 90018])
    report = _sync(corp)
    assert report.status == "succeeded" and report.counts["create"] == 30

    fake.fail_always["topapi/v2/user/list"] = {"errcode": 90018, "errmsg": "too many calls"}
    with pytest.raises(DirectoryError, match="still rate limited"):
        _sync(corp)


def test_short_and_capped_pages_are_followed_by_cursor(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    known_secrets: Any,
) -> None:
    known_secrets.add(APP_SECRET)
    fake = DingTalkFake(company(users=250, departments=2)).start()
    try:
        fake.page_cap = 7  # the server hands out fewer than the 100 asked for
        services = make_services(make_settings(sqlite_db_url, toml=source_toml(fake), env=ENV))
        services.migrate()
        report = _sync(services)
        assert report.counts["create"] == 250
        # 125 members per department, 7 a page: 18 pages each.
        assert fake.calls["topapi/v2/user/list"] == 2 * 18
    finally:
        fake.stop()


def test_a_department_listing_that_keeps_failing_disables_nobody(
    corp_db: Services, fake: DingTalkFake
) -> None:
    _sync(corp_db)
    fake.fail_always["topapi/v2/department/listsub"] = {"errcode": -1, "errmsg": "系统繁忙"}
    with pytest.raises(DirectoryError, match="department/listsub"):
        _sync(corp_db)
    assert not any(u.disabled for u in _users(corp_db).values())
    last = _rows(corp_db, select(sync_runs).order_by(sync_runs.c.started_at.desc()))[0]
    assert last.status == "failed" and "department/listsub" in last.error


def test_a_wrong_secret_or_unknown_error_is_one_clear_message(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    fake: DingTalkFake,
    known_secrets: Any,
) -> None:
    known_secrets.add("not-the-secret")
    services = make_services(
        make_settings(
            sqlite_db_url, toml=source_toml(fake), env={"DINGTALK_APP_SECRET": "not-the-secret"}
        )
    )
    services.migrate()
    with pytest.raises(DirectoryError) as caught:
        _sync(services)
    assert "gettoken answered errcode 40089" in str(caught.value)
    assert "not-the-secret" not in str(caught.value)


def test_config_refuses_a_secret_in_the_file(
    make_settings: Callable[..., Settings], sqlite_db_url: str, fake: DingTalkFake
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(sqlite_db_url, toml=source_toml(fake, 'app_secret = "x"\n'), env=ENV)
    assert "app_secret must not be written" in str(caught.value) and caught.value.line == 7
    with pytest.raises(ConfigError, match="page_size must be 1 to 100"):
        make_settings(sqlite_db_url, toml=source_toml(fake, "page_size = 500\n"), env=ENV)


def test_serve_schedules_the_source(corp: Services) -> None:
    corp.sync_scheduler.run_due()
    runs = _rows(corp, select(sync_runs.c.source, sync_runs.c.status))
    assert ("dingtalk:corp", "succeeded") in [(r.source, r.status) for r in runs]


def test_cli_sync_dingtalk(
    fake: DingTalkFake, cli_config: Path, run_cli: Callable[..., Any], known_secrets: Any
) -> None:
    known_secrets.add(APP_SECRET)
    secret = cli_config.parent / "dingtalk.secret"
    secret.write_text(APP_SECRET + "\n", encoding="utf-8")
    table = source_toml(fake).replace(
        'app_secret_env = "DINGTALK_APP_SECRET"', f'app_secret_file = "{secret}"'
    )
    cli_config.write_text(cli_config.read_text(encoding="utf-8") + "\n" + table, encoding="utf-8")

    dry = run_cli("sync", "dingtalk", "corp", "--dry-run", "--limit", "3", config=cli_config)
    assert dry.code == 0, dry.err
    assert "plan (dry run, nothing changed)" in dry.out and "+ create   dt000000" in dry.out
    assert "+ department /示例集团/部门0002\n" in dry.out
    real = json.loads(run_cli("sync", "dingtalk", "corp", "--json", config=cli_config).out)
    assert real["status"] == "succeeded" and real["counts"]["create"] == 30
    status = json.loads(run_cli("sync", "status", "--json", config=cli_config).out)
    assert [s["last_run"]["status"] for s in status if s["source"] == "dingtalk:corp"] == [
        "succeeded"
    ]
    missing = run_cli("sync", "dingtalk", "nope", config=cli_config)
    assert missing.code == 2 and "no dingtalk source named 'nope' (known: corp)" in missing.err
    assert APP_SECRET not in dry.out + dry.err + missing.err


def test_neither_the_secret_nor_a_token_reaches_the_log(
    corp: Services, fake: DingTalkFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script("topapi/v2/user/list", [("http", 502)])
    with caplog.at_level("DEBUG"):
        _sync(corp)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP Request" in text and "access_token=***" in text  # httpx did log the calls
    assert APP_SECRET not in text and "token-1" not in text


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (("http", 403), "topapi/v2/user/list: HTTP 403"),
        (("raw", b"<html>proxy login</html>"), "without a JSON body"),
        (60011, "answered errcode 60011"),
    ],
)
def test_other_failures_fail_the_run_with_one_clear_line(
    corp: Services, fake: DingTalkFake, answer: Any, message: str
) -> None:
    fake.script("topapi/v2/user/list", [answer])
    with pytest.raises(DirectoryError, match=message) as caught:
        _sync(corp)
    assert "\n" not in str(caught.value) and "token-" not in str(caught.value)
    assert _users(corp) == {}


def test_a_department_made_in_idhub_keeps_its_manager_and_order(
    corp_db: Services, fake: DingTalkFake
) -> None:
    # An admin made the department (and its parents) by hand before DingTalk was connected,
    # and gave it a head of their choosing.
    admin = Actor("admin", "root")
    local = corp_db.local_departments
    for path in ("/示例集团", "/示例集团/部门0002", "/示例集团/部门0002/部门0004"):
        local.add(path, actor=admin)
    corp_db.identity.create_user(username="boss", display_name="Boss")
    local.set_manager("/示例集团/部门0002/部门0004", "boss", actor=admin)

    report = _sync(corp_db)
    assert report.status == "succeeded"
    paths = {r.path: r for r in _rows(corp_db, select(departments))}
    kept = paths["/示例集团/部门0002/部门0004"]
    boss = _users(corp_db)["boss"]
    # DingTalk names dt000003 the leader and order 4; the admin's choice stands.
    assert kept.manager_user_id == boss.id and kept.sort_order is None
    assert any("were made in idhub" in w and "部门0004" in w for w in report.plan.warnings)
    # A department DingTalk made is still DingTalk's to head and order.
    theirs = [r for r in paths.values() if r.source == "dingtalk:corp"]
    assert theirs and any(r.manager_user_id is not None for r in theirs)
    assert all(r.sort_order is not None for r in theirs)
    # The sync's people still land in the kept department.
    assert any(u.department_id == kept.id for u in _users(corp_db).values())

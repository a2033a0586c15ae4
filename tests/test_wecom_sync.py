"""WeCom contacts sync against a local fake of WeCom's server API (tests/wecom_fake.py): the
tree from one department/list, members per department, leaders as managers, statuses 1/2/4/5,
absent mobile/email, and WeCom's realities (errcode in 200 bodies, early token expiry, rate
limits 45009/45033, system busy and 5xx, a listing that keeps failing)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import departments, users
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.errors import DirectoryError
from tests.wecom_fake import CORP_ID, CORP_SECRET, WeComFake, company

ENV = {"WECOM_SECRET": CORP_SECRET}


def source_toml(fake: WeComFake, extra: str = "") -> str:
    return (
        f'[directory.wecom.corp]\nbase_url = "{fake.url}"\ncorp_id = "{CORP_ID}"\n'
        'corp_secret_env = "WECOM_SECRET"\nretry_base = 0.01\nrate_limit_wait = 2\n'
        f"{extra}"
    )


@pytest.fixture
def fake() -> Iterator[WeComFake]:
    server = WeComFake(company(users=30, departments=6)).start()
    yield server
    server.stop()


def _make(
    fake: WeComFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    url: str,
    known_secrets: Any,
) -> Services:
    known_secrets.add(CORP_SECRET)
    services = make_services(make_settings(url, toml=source_toml(fake), env=ENV))
    services.migrate()
    return services


@pytest.fixture
def corp(
    fake: WeComFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    known_secrets: Any,
) -> Services:
    return _make(fake, make_settings, make_services, sqlite_db_url, known_secrets)


def _rows(services: Services, query: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(query))


def _users(services: Services) -> dict[str, Any]:
    return {r.username: r for r in _rows(services, select(users))}


def _sync(services: Services, **kwargs: Any) -> Any:
    return services.oa_sync("wecom:corp").run(**kwargs)


def test_sync_maps_tree_leaders_statuses_and_absent_contacts(
    fake: WeComFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: Any,
) -> None:
    services = _make(fake, make_settings, make_services, db_url, known_secrets)
    fake.org.status.update({"dt000012": 2, "dt000013": 4, "dt000014": 5})
    fake.org.hidden_contact.add("dt000015")
    report = _sync(services)
    assert report.status == "succeeded" and report.counts["create"] == 30
    people = _users(services)
    assert people["dt000012"].disabled and people["dt000014"].disabled
    assert not people["dt000013"].disabled and not people["dt000011"].disabled
    assert people["dt000015"].email is None and people["dt000015"].phone is None
    assert people["dt000016"].email == "dt000016@example.com"  # from biz_mail
    paths = {r.path: r for r in _rows(services, select(departments))}
    by_id = {r.id: r.username for r in people.values()}
    assert by_id[paths["/示例集团/部门0002/部门0004"].manager_user_id] == "dt000003"
    assert paths["/示例集团/部门0002/部门0004"].sort_order == 4
    assert fake.calls["cgi-bin/department/list"] == 1
    assert fake.calls["cgi-bin/user/list"] == 6 and fake.calls["cgi-bin/gettoken"] == 1

    del fake.org.members["dt000020"]
    assert _sync(services).counts["disable"] == 1


def test_wecom_realities_are_retried_and_waited_out(corp: Services, fake: WeComFake) -> None:
    fake.script("cgi-bin/user/list", [-1, ("http", 502), 45009, 45033, 42001])
    fake.script("cgi-bin/department/list", [40014])
    report = _sync(corp)
    assert report.status == "succeeded" and report.counts["create"] == 30
    assert fake.calls["cgi-bin/gettoken"] == 3


def test_a_listing_that_keeps_failing_disables_nobody(corp: Services, fake: WeComFake) -> None:
    _sync(corp)
    fake.fail_always["cgi-bin/department/list"] = {"errcode": -1, "errmsg": "system busy"}
    with pytest.raises(DirectoryError, match="gave up after 5 tries"):
        _sync(corp)
    fake.fail_always.clear()
    fake.fail_always["cgi-bin/user/list"] = {"errcode": 45009, "errmsg": "api freq out of limit"}
    with pytest.raises(DirectoryError, match="still rate limited"):
        _sync(corp)
    assert not any(u.disabled for u in _users(corp).values())


def test_cli_sync_wecom_dry_run(
    fake: WeComFake, cli_config: Path, run_cli: Callable[..., Any], known_secrets: Any
) -> None:
    known_secrets.add(CORP_SECRET)
    secret = cli_config.parent / "wecom.secret"
    secret.write_text(CORP_SECRET, encoding="utf-8")
    table = source_toml(fake).replace(
        'corp_secret_env = "WECOM_SECRET"', f'corp_secret_file = "{secret}"'
    )
    cli_config.write_text(cli_config.read_text(encoding="utf-8") + "\n" + table, encoding="utf-8")
    plan = json.loads(
        run_cli("sync", "wecom", "corp", "--dry-run", "--json", config=cli_config).out
    )
    assert plan["status"] == "planned" and plan["counts"]["create"] == 30
    wrong = run_cli("sync", "wecom", "other", config=cli_config)
    assert wrong.code == 2 and "no wecom source named 'other'" in wrong.err


def test_list_id_by_cursor_with_capped_pages_then_user_get(
    fake: WeComFake,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    known_secrets: Any,
) -> None:
    known_secrets.add(CORP_SECRET)
    toml = source_toml(fake, 'member_listing = "list_id"\n')
    services = make_services(make_settings(sqlite_db_url, toml=toml, env=ENV))
    services.migrate()
    fake.page_cap = 8  # far below the 10,000 asked for
    fake.org.members["dt000010"].depts = [3, 5]  # two pairs, one person
    fake.org.hidden_contact.add("dt000015")
    fake.script("cgi-bin/user/get", [45033, -1])
    report = _sync(services)
    assert report.counts["create"] == 30 and report.counts["warnings"] == 0
    people = _users(services)
    assert people["dt000015"].email is None and people["dt000016"].email is not None
    paths = {r.id: r.path for r in _rows(services, select(departments))}
    assert paths[people["dt000010"].department_id] == "/示例集团/部门0003"
    # 31 pairs, 8 a page: 4 list_id pages; one user/get per person (+2 retried).
    assert fake.calls["cgi-bin/user/list_id"] == 4
    assert fake.calls["cgi-bin/user/get"] == 30 + 2
    assert "cgi-bin/user/list" not in fake.calls

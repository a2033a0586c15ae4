"""scim2-tester, a third-party SCIM compliance checker, against a live idhub over real HTTP
(scim2-client with httpx2), on SQLite and PostgreSQL: every check it runs must pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.scim_support import HR_TOKEN, TOML

PASSING = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE}


def test_scim2_tester_finds_nothing_wrong(
    make_live_server: Callable[..., Any], db_url: str, known_secrets: Any
) -> None:
    known_secrets.add(HR_TOKEN)
    server = make_live_server(db_url, toml=TOML)
    with httpx2.Client(
        base_url=server.url + "/scim/v2",
        headers={"Authorization": f"Bearer {HR_TOKEN}"},
        timeout=10,
    ) as http:
        results = check_server(SyncSCIMClient(http))
    failed = [
        f"{r.resource_type or '-'} {r.title}: {r.status.name} {r.reason}"
        for r in results
        if r.status not in PASSING and r.status is not Status.SKIPPED
    ]
    # It ran its whole catalogue (discovery, then CRUD, queries and PATCH of both types).
    ran = [r for r in results if r.status is not Status.SKIPPED]
    assert len(ran) > 60 and {r.resource_type for r in ran} >= {"User", "Group"}
    assert not failed, "\n".join(failed)

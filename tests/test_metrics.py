"""`/metrics`: what the issue lists is counted under route templates, from real flows, on
both databases; the endpoint can be closed with a token; several workers add up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from idhub.bootstrap import Services
from idhub.config import load_settings
from idhub.core.authz.decisions import Question
from tests.conftest import LiveServer
from tests.oidc_support import RP, issue_code, make_user, pkce_pair, web_client
from tests.serve_support import serve, write_config
from tests.sso_support import login


def scrape(url: str, **kw: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics", **kw)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def test_real_flows_are_counted_under_route_templates(server: LiveServer) -> None:
    services = server.services
    url = server.url
    _, secret = services.clients.register(
        "batch", grant_types=["client_credentials"], scope="authz", allowed_audiences=["idhub"]
    )
    for _ in range(2):
        r = httpx.post(
            url + "/token", data={"grant_type": "client_credentials"}, auth=("batch", secret)
        )
        assert r.status_code == 200
    # A code flow, a refresh, and the superseded refresh token presented again.
    _, web_secret = web_client(services)
    user = make_user(services)
    verifier, challenge = pkce_pair()
    code = issue_code(services, "oa", user, challenge=challenge, scope="openid offline_access")
    tokens = httpx.post(
        url + "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP,
              "code_verifier": verifier},
        auth=("oa", web_secret),
    ).json()  # fmt: skip
    old = tokens["refresh_token"]
    refreshed = httpx.post(
        url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": old},
        auth=("oa", web_secret),
    )
    assert refreshed.status_code == 200
    # The successor used: presenting the superseded token now is reuse, grace window or not.
    onward = httpx.post(
        url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]},
        auth=("oa", web_secret),
    )
    assert onward.status_code == 200
    reused = httpx.post(
        url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": old},
        auth=("oa", web_secret),
    )
    assert reused.status_code == 400
    with httpx.Client(base_url=url) as browser:
        assert login(browser, "nobody", "a-wrong-guess-1").status_code == 401
    # A path with an id in it: the label is the template's fallback, never the raw path.
    assert httpx.get(url + "/no/such/page-7f3a9c").status_code == 404
    answer = services.decisions.current().decide(
        Question(domain="oa", user="zhangsan", type="expense", action="read")
    )
    assert answer is not None

    samples = scrape(url)
    text = httpx.get(url + "/metrics").text
    assert "page-7f3a9c" not in text and old not in text and secret not in text
    assert (
        value(samples, "idhub_http_requests_total", route="/token", method="POST", status="200")
        == 5
    )
    assert value(samples, "idhub_http_requests_total", route="/token", status="400") == 1
    assert value(samples, "idhub_http_requests_total", route="unmatched", status="404") == 1
    assert value(samples, "idhub_http_request_duration_seconds_count", route="/token") == 6
    assert (
        value(
            samples, "idhub_tokens_issued_total", grant_type="client_credentials", client_id="batch"
        )
        == 2
    )
    assert (
        value(samples, "idhub_tokens_issued_total", grant_type="authorization_code", client_id="oa")
        == 1
    )
    assert (
        value(samples, "idhub_tokens_issued_total", grant_type="refresh_token", client_id="oa") == 2
    )
    assert value(samples, "idhub_refresh_reuse_detected_total", client_id="oa") == 1
    assert value(samples, "idhub_signin_failures_total") == 1
    assert value(samples, "idhub_decisions_total", domain="oa") == 1
    assert value(samples, "idhub_decision_duration_seconds_count", domain="oa") == 1
    assert value(samples, "idhub_audit_append_duration_seconds_count") >= 5
    assert ("idhub_sessions_active", ()) in samples
    assert ("idhub_db_connections_in_use", ()) in samples
    assert value(samples, "idhub_policy_state", state="loaded") == 1
    assert len([k for k in samples if k[0] == "idhub_policy_version_info"]) == 1


def test_active_sessions_count_what_the_database_holds(server: LiveServer) -> None:
    from tests.sso_support import make_user as make_password_user

    make_password_user(server.services, "grace", "grace-password-1")
    before = value(scrape(server.url), "idhub_sessions_active")
    with httpx.Client(base_url=server.url) as browser:
        assert login(browser, "grace", "grace-password-1").status_code == 200
    assert value(scrape(server.url), "idhub_sessions_active") == before + 1


def test_a_token_closes_the_endpoint(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str
) -> None:
    live = make_live_server(sqlite_db_url, env={"IDHUB_METRICS_TOKEN": "scrape-token-1234567890"})
    assert httpx.get(live.url + "/metrics").status_code == 401
    wrong = httpx.get(
        live.url + "/metrics", headers={"Authorization": "Bearer scrape-token-12345678901"}
    )
    assert wrong.status_code == 401 and "idhub_" not in wrong.text
    samples = scrape(live.url, headers={"Authorization": "Bearer scrape-token-1234567890"})
    assert value(samples, "idhub_http_requests_total", route="/metrics", status="401") == 2


def test_metrics_can_be_switched_off(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str
) -> None:
    live = make_live_server(sqlite_db_url, toml="[metrics]\nenabled = false\n")
    assert httpx.get(live.url + "/metrics").status_code == 404
    assert httpx.get(live.url + "/healthz").status_code == 200


def test_two_workers_add_up_in_one_scrape(
    tmp_path: Path, make_services: Callable[..., Services]
) -> None:
    served = write_config(tmp_path)
    # What a previous run's workers left is not summed in: the directory is emptied at start.
    (served.var / "metrics").mkdir()
    stale = served.var / "metrics" / "counter_999999.db"
    stale.write_bytes(b"left over")
    with serve(served, "--workers", "2"):
        assert not stale.exists()
        before = value(scrape(served.url), "idhub_http_requests_total", route="/healthz")
        for _ in range(40):
            # A new connection each time, so both workers answer some.
            assert httpx.get(served.url + "/healthz").status_code == 200
        files = list((served.var / "metrics").glob("*.db"))
        pids = {f.stem.rsplit("_", 1)[-1] for f in files}
        assert len(pids) >= 2, files
        for _ in range(3):  # whichever worker answers the scrape, the sum is the same
            samples = scrape(served.url)
            assert value(samples, "idhub_http_requests_total", route="/healthz") == before + 40
            assert value(samples, "idhub_http_requests_total", route="/metrics") >= 1
    services = make_services(load_settings(served.config, env={}))
    assert services.settings.metrics.multiprocess_dir is None


def test_the_grafana_dashboard_asks_only_for_metrics_idhub_exports() -> None:
    import json
    import re

    from idhub.core.metrics import CATALOGUE
    from tests.conftest import REPO

    dashboard = json.loads((REPO / "deploy" / "grafana" / "idhub-dashboard.json").read_text())
    exported = {spec.name for spec in CATALOGUE} | {
        "idhub_sessions_active", "idhub_policy_state", "idhub_policy_version_info",
        "idhub_audit_sink_lag_events", "idhub_db_pool_size", "idhub_background_jobs_failing",
    }  # fmt: skip
    histograms = {spec.name for spec in CATALOGUE if spec.kind == "histogram"}
    asked = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            asked |= set(re.findall(r"\bidhub_[a-z_]+", target["expr"]))
    for name in asked:
        base = name.removesuffix("_bucket")
        assert name in exported or (name.endswith("_bucket") and base in histograms), name
    # Every catalogue metric has a panel.
    assert {n.removesuffix("_bucket") for n in asked} >= exported


@pytest.mark.slapd
def test_scheduled_sync_runs_are_counted_per_source(
    slapd_company: Any,
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> None:
    from tests.slapd import SOURCE_ENV, source_toml

    settings = make_settings(sqlite_db_url, toml=source_toml(slapd_company), env=SOURCE_ENV)
    services = make_services(settings)
    services.start_metrics()
    services.sync_scheduler.run_due()
    prom = services.prometheus
    assert prom is not None
    body, _ = prom.exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    from sqlalchemy import func, select

    from idhub.adapters.db import users

    with services.engine.connect() as conn:
        created = conn.execute(select(func.count()).select_from(users)).scalar_one()
    assert created > 0
    assert value(samples, "idhub_sync_runs_total", source="ldap:corp", outcome="succeeded") == 1
    assert value(samples, "idhub_sync_changes_total", source="ldap:corp", kind="create") == created
    assert value(samples, "idhub_sync_duration_seconds_count", source="ldap:corp") == 1


def test_policy_rejection_and_sink_lag_show(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, tmp_path: Path
) -> None:
    import shutil

    from tests.conftest import REPO

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    sink = tmp_path / "audit.jsonl"
    live = make_live_server(
        sqlite_db_url,
        env={"IDHUB_POLICY_DIR": str(policies)},
        toml=f'[policy]\nwatch = false\n\n[audit]\njsonl_path = "{sink}"\n',
    )
    live.services.authz.reload(trigger="test")
    (policies / "model.conf").write_text("[request_definition]\nr = \n", encoding="utf-8")
    live.services.authz.reload(trigger="test")
    samples = scrape(live.url)
    assert value(samples, "idhub_policy_reloads_total", result="rejected") == 1
    assert value(samples, "idhub_policy_state", state="last_reload_ok") == 0
    assert value(samples, "idhub_policy_state", state="loaded") == 1  # the old one serves
    lag = [k for k in samples if k[0] == "idhub_audit_sink_lag_events"]
    assert [dict(k[1])["sink"] for k in lag] == [f"jsonl:{sink}"]
    deadline = time.monotonic() + 10
    while value(scrape(live.url), "idhub_audit_sink_lag_events") > 0:
        assert time.monotonic() < deadline, "the sink never caught up"
        time.sleep(0.2)


def test_metrics_answer_while_the_database_is_unreachable(
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sqlalchemy import create_engine

    from idhub.adapters.session_store import SqlSessionStore
    from tests.conftest import free_port
    from tests.conftest import serve as serve_app

    port = free_port()
    services = make_services(make_settings(sqlite_db_url, issuer=f"http://127.0.0.1:{port}"))
    services.migrate()
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'idhub.db'}")
    services.session_store = SqlSessionStore(broken)  # type: ignore[misc]
    with serve_app(services, port) as url:
        samples = scrape(url)
    broken.dispose()
    assert ("idhub_sessions_active", ()) not in samples  # left out of this scrape ...
    assert ("idhub_db_pool_size", ()) in samples  # ... the rest still answers
    assert any("idhub_sessions_active not read" in r.getMessage() for r in caplog.records)


def test_readiness_readings_and_outage_counters_are_exported(server: LiveServer) -> None:
    """What `/readyz` last read (database reached, the database server's clock offset) and
    the outage counters (stalls, held decision records, revocations answered from memory)."""
    before = scrape(server.url)
    assert ("idhub_database_reachable", ()) not in before  # nothing read yet
    assert httpx.get(server.url + "/readyz").status_code == 200
    samples = scrape(server.url)
    assert samples[("idhub_database_reachable", ())] == 1.0
    for name in (
        "idhub_database_stalls",
        "idhub_decision_audit_held",
        "idhub_decision_audit_dropped",
        "idhub_revocations_answered_from_memory",
    ):
        assert samples[(name, ())] == 0.0, name
    offset = samples.get(("idhub_clock_offset_seconds", ()))
    if server.services.engine.dialect.name == "postgresql":
        assert offset is not None and abs(offset) < 2.0  # same host, one clock
    else:
        assert offset is None  # SQLite has no server clock

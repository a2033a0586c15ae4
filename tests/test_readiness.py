"""`/readyz` means "send me traffic": what fails it (database, keys, no policy at all), what only
degrades it (a rejected policy reload, a clock far from the database server's), and the clock
tolerance between replicas that sign and check each other's tokens."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.readiness import clock_warning
from idhub.oidc.tokens import InvalidToken
from tests.conftest import REPO
from tests.oidc_support import prepare, web_client


class SkewedClock:
    """This replica's clock, `offset` seconds off the true time."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_clock_offset_against_postgresql_is_reported_and_warned(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> None:
    settings = make_settings(db_url)
    honest = make_services(settings).health.assess()
    assert honest.clock_offset is not None and abs(honest.clock_offset) < 1.0
    assert not [w for w in honest.warnings if w.startswith("clock:")]

    ahead = make_services(settings, clock=SkewedClock(30.0))
    report = ahead.health.assess()
    assert report.clock_offset is not None and -31.0 < report.clock_offset < -29.0
    assert report.checks["database"] == "ok"
    (warning,) = [w for w in report.warnings if w.startswith("clock:")]
    assert "30.0s ahead of the database server's clock" in warning
    assert report.to_json()["clock_offset_seconds"] == round(report.clock_offset, 3)
    assert ahead.health.gauges.clock_offset == report.clock_offset


def test_the_warning_threshold_is_a_setting(
    make_settings: Callable[..., Settings], sqlite_db_url: str
) -> None:
    settings = make_settings(sqlite_db_url, toml="[database]\nclock_offset_warning = 0.5\n")
    assert settings.database.clock_offset_warning == 0.5
    assert clock_warning(0.4, 0.5) is None
    assert clock_warning(-0.6, 0.5) is not None and "ahead of" in str(clock_warning(-0.6, 0.5))
    assert "behind" in str(clock_warning(2.0, 0.5))
    assert clock_warning(None, 0.5) is None  # SQLite: no server clock to compare with


def test_tokens_from_a_replica_whose_clock_runs_ahead_pass_within_the_tolerance(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> None:
    ahead = make_services(make_settings(sqlite_db_url), clock=SkewedClock(30.0))
    prepare(ahead)
    client, _ = web_client(ahead, "oa")
    token, _claims = ahead.access_tokens.issue(client, sub="s-1", audience="oa", scopes=["openid"])

    strict = make_services(make_settings(sqlite_db_url))  # the default tolerance, 10 s
    assert strict.settings.tokens.clock_skew == 10
    with pytest.raises(InvalidToken, match="issued in the future"):
        strict.access_tokens.verify(token)
    tolerant = make_services(make_settings(sqlite_db_url, toml="[tokens]\nclock_skew = 45\n"))
    assert tolerant.access_tokens.verify(token)["sub"] == "s-1"


def test_a_rejected_policy_reload_degrades_and_keeps_serving(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    services = make_services(
        make_settings(
            db_url, toml="[policy]\nwatch = false\n", env={"IDHUB_POLICY_DIR": str(policies)}
        )
    )
    services.migrate()
    prepare(services)
    services.authz.load_for_serving()
    before = services.health.assess()
    assert before.ready and before.status == "ready", before
    serving = services.authz.engine.version

    csv = policies / "oa.csv"
    csv.write_text(csv.read_text(encoding="utf-8") + "p, employee, oa\n", encoding="utf-8")
    assert not services.authz.reload(trigger="test").ok
    after = services.health.assess()
    assert after.ready and after.status == "degraded", after
    assert after.checks["policy"] == "ok"
    (warning,) = [w for w in after.warnings if w.startswith("policy:")]
    assert warning.startswith(f"policy: reload rejected, still serving {serving}: oa.csv:")
    assert services.health.gauges.policy_degraded is True
    assert services.authz.engine.version == serving


def test_a_broken_probe_is_a_reason_not_a_500() -> None:
    from idhub.core.readiness import DatabaseClock, Readiness

    def broken() -> str:
        raise RuntimeError("probe bug")

    def broken_warnings() -> list[str]:
        raise ValueError("warning bug")

    readiness = Readiness(
        database=lambda: DatabaseClock(reachable=True, offset=0.1),
        checks={"keys": lambda: "ok", "odd": broken},
        warnings=[broken_warnings, lambda: ["fine"]],
        clock_warning_after=2.0,
    )
    report = readiness.assess()
    assert not report.ready and report.status == "not_ready"
    assert report.checks == {
        "database": "ok",
        "keys": "ok",
        "odd": "probe failed: RuntimeError: probe bug",
    }
    assert report.warnings == ["a readiness warning failed: ValueError: warning bug", "fine"]

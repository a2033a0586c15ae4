"""What `/readyz` answers: "send this replica traffic" or not, and what is wrong meanwhile.

A replica is *not ready* only for what stops it from serving: the database does not answer,
it holds no signing key, or no policy could be loaded at all (probes registered as checks).
Everything else that is wrong but survivable is a *warning* and the replica stays in the
balancer, "degraded": an audit sink behind or failing (the trail itself is in the database),
a rejected policy reload (the previous policy keeps serving), a background job failing, a
clock far from the database server's. The same cause on every replica (LDAP down, a SIEM
down, a bad policy edit) must not take them all out at once.

The last values measured here (clock offset, sink lag, policy degraded) are kept for metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatabaseClock:
    """One round trip to the database: did it answer, and how far is our clock from its."""

    reachable: bool
    # database server's clock minus this replica's, in seconds; None when not measurable
    # (SQLite has no server clock; an unreachable database has none to read).
    offset: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ReadinessReport:
    ready: bool
    checks: dict[str, str]
    warnings: list[str]
    clock_offset: float | None

    @property
    def status(self) -> str:
        if not self.ready:
            return "not_ready"
        return "degraded" if self.warnings else "ready"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": self.checks,
            "warnings": self.warnings,
            "clock_offset_seconds": (
                None if self.clock_offset is None else round(self.clock_offset, 3)
            ),
        }


def clock_warning(offset: float | None, threshold: float) -> str | None:
    """A warning when this replica's clock is more than `threshold` seconds off."""
    if offset is None or abs(offset) <= threshold:
        return None
    way = "behind" if offset > 0 else "ahead of"
    return (
        f"clock: this replica is {abs(offset):.1f}s {way} the database server's clock "
        f"(warning past {threshold:g}s; tokens it signs may be refused elsewhere)"
    )


@dataclass
class OutageGauges:
    """The last readings, for /metrics: read without touching the database."""

    clock_offset: float | None = None
    database_reachable: bool | None = None
    policy_degraded: bool = False
    sink_lag: dict[str, int] = field(default_factory=dict)


class Readiness:
    """Runs the probes. `checks` answer "ok" or a reason that makes the replica unready;
    `warnings` return lines that only degrade it."""

    def __init__(
        self,
        *,
        database: Callable[[], DatabaseClock],
        checks: Mapping[str, Callable[[], str]],
        warnings: Sequence[Callable[[], list[str]]],
        clock_warning_after: float,
    ) -> None:
        self._database = database
        self._checks = checks
        self._warnings = warnings
        self._clock_warning_after = clock_warning_after
        self.gauges = OutageGauges()
        self._lock = threading.Lock()

    def assess(self) -> ReadinessReport:
        clock = self._database()
        checks = {"database": "ok" if clock.reachable else (clock.error or "unreachable")}
        for name, probe in self._checks.items():
            try:
                checks[name] = probe()
            except Exception as exc:  # a probe that breaks is a reason, never a 500
                checks[name] = f"probe failed: {type(exc).__name__}: {exc}"[:200]
        warnings: list[str] = []
        for source in self._warnings:
            try:
                warnings.extend(source())
            except Exception as exc:
                warnings.append(f"a readiness warning failed: {type(exc).__name__}: {exc}"[:200])
        skew = clock_warning(clock.offset, self._clock_warning_after)
        if skew is not None:
            warnings.append(skew)
        with self._lock:
            self.gauges.database_reachable = clock.reachable
            if clock.offset is not None:
                self.gauges.clock_offset = clock.offset
        ready = all(value == "ok" for value in checks.values())
        return ReadinessReport(ready, checks, warnings, clock.offset)

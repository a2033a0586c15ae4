"""The background runtime: intervals, wake-ups, failures and retries, bounded stops, signals."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from idhub.runtime import Job, Runtime
from tests.conftest import LiveServer


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    runtime = Runtime(now=lambda: 1_000.0, join_timeout=1.0, rng=random.Random(7))
    yield runtime
    runtime.stop()


class Counter:
    def __init__(self, *, fail: int = 0) -> None:
        self.runs = 0
        self.fail = fail  # the first `fail` runs raise

    def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.fail:
            raise RuntimeError(f"boom {self.runs}\nsecond line")


def test_a_job_runs_on_its_interval_after_its_delay(runtime: Runtime) -> None:
    counter = Counter()
    runtime.add(Job(name="tick", run_once=counter, interval=0.02, delay=0.1))
    runtime.start()
    time.sleep(0.05)
    assert counter.runs == 0  # still in its first delay
    assert wait_for(lambda: counter.runs >= 3)
    health = runtime.health("tick")
    assert health.running and health.failures == 0 and health.last_error is None
    assert health.last_success_at == 1_000.0  # from the injected clock
    assert runtime.readiness() == "ok"


def test_a_wake_trigger_runs_the_job_early(runtime: Runtime) -> None:
    counter = Counter()
    listeners: list[Callable[[], None]] = []
    prepared: list[int] = []
    runtime.add(
        Job(
            name="deliver",
            run_once=counter,
            interval=60.0,
            delay=60.0,
            wake_on=listeners.append,
            prepare=lambda: prepared.append(counter.runs),
        )
    )
    runtime.start()
    assert prepared == [0] and len(listeners) == 1
    time.sleep(0.05)
    assert counter.runs == 0
    listeners[0]()
    assert wait_for(lambda: counter.runs == 1)
    runtime.wake("deliver")
    assert wait_for(lambda: counter.runs == 2)
    # A restart keeps the one listener registered: it cannot be taken back.
    runtime.stop_job("deliver")
    runtime.start_job("deliver")
    assert len(listeners) == 1
    listeners[0]()
    assert wait_for(lambda: counter.runs == 3)


def test_a_wake_only_job_waits_for_its_trigger(runtime: Runtime) -> None:
    counter = Counter()
    runtime.add(Job(name="on-demand", run_once=counter, interval=None))
    runtime.start()
    time.sleep(0.1)
    assert counter.runs == 0 and runtime.health("on-demand").running
    runtime.wake("on-demand")
    assert wait_for(lambda: counter.runs == 1)


def test_a_failing_job_is_reported_and_retried(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    counter = Counter(fail=3)
    runtime.add(Job(name="flaky", run_once=counter, interval=0.05, retry=0.01))
    with caplog.at_level(logging.WARNING, logger="idhub.runtime"):
        runtime.start()
        assert wait_for(lambda: runtime.health("flaky").failures >= 2)
        health = runtime.health("flaky")
        assert health.running and health.last_success_at is None
        assert health.last_error is not None and health.last_error.startswith("RuntimeError: boom")
        # Failing is a warning, not unreadiness: the job still runs and is retried.
        assert runtime.readiness_of("flaky") == "ok" and runtime.readiness() == "ok"
        assert runtime.warnings()[0].startswith("flaky failing (")
        assert wait_for(lambda: counter.runs >= 4)  # kept being retried until it succeeded
    assert wait_for(lambda: runtime.health("flaky").failures == 0)
    assert runtime.health("flaky").last_error is None
    assert runtime.warnings() == []
    failures = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert len(failures) == 3
    # One line each, with the job's name and the error's first line; no traceback.
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failures)
    assert (
        failures[0].getMessage() == "background job flaky failed (1 in a row): RuntimeError: boom 1"
    )


def test_retries_back_off_with_jitter_up_to_the_interval() -> None:
    runtime = Runtime(rng=random.Random(1))
    job = Job(name="j", run_once=lambda: None, interval=60.0, retry=5.0)
    delays = [runtime.retry_delay(job, n) for n in range(1, 7)]
    bases = [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert all(0.8 * b <= d <= b for d, b in zip(delays, bases, strict=True))
    hourly = Job(name="h", run_once=lambda: None, interval=3600.0, retry=60.0)
    assert runtime.retry_delay(hourly, 20) <= 300.0


def test_stop_joins_within_its_bound_and_finishes_jobs(caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime(join_timeout=0.3)
    release = threading.Event()
    finished: list[str] = []
    runtime.add(
        Job(
            name="quick",
            run_once=lambda: None,
            interval=0.01,
            finish=lambda: finished.append("quick"),
        )
    )
    runtime.add(
        Job(
            name="stuck",
            run_once=lambda: release.wait(5),
            interval=0.01,
            finish=lambda: finished.append("stuck"),
        )
    )
    runtime.start()
    assert wait_for(lambda: runtime.health("quick").last_success_at is not None)
    time.sleep(0.05)  # "stuck" is inside its run now
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="idhub.runtime"):
        runtime.stop()
    took = time.monotonic() - started
    release.set()
    assert took < 1.0
    assert not runtime.health("quick").running
    assert finished == ["stuck", "quick"]  # in reverse order of registration
    assert any("stuck did not stop within" in r.getMessage() for r in caplog.records)


def test_readiness_shows_a_stopped_job_only_while_the_runtime_runs(runtime: Runtime) -> None:
    runtime.add(Job(name="worker", run_once=lambda: None, interval=1.0))
    assert runtime.readiness_of("worker") == "ok"  # never started (a CLI process)
    runtime.start()
    assert runtime.readiness_of("worker") == "ok"
    runtime.stop_job("worker")
    assert runtime.readiness_of("worker", stopped="worker stopped!") == "worker stopped!"
    assert runtime.readiness() == "worker stopped"
    runtime.start_job("worker")
    assert runtime.readiness() == "ok"
    runtime.remove("worker")
    assert runtime.names == [] and runtime.readiness_of("worker") == "ok"


def test_sighup_wakes_its_job_and_the_handler_is_restored(runtime: Runtime) -> None:
    counter = Counter()
    runtime.add(Job(name="reload", run_once=counter, interval=None))
    runtime.on_signal(signal.SIGHUP, "reload")
    before = signal.getsignal(signal.SIGHUP)
    runtime.start()
    try:
        # Never send SIGHUP unless our handler is in place: the default action ends the process.
        assert signal.getsignal(signal.SIGHUP) == runtime.handle_signal
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: counter.runs == 1)
    finally:
        runtime.stop()
    assert signal.getsignal(signal.SIGHUP) == before


def test_readyz_warns_of_a_failing_background_job(server: LiveServer) -> None:
    live_server = server
    services = live_server.services
    first = httpx.get(f"{live_server.url}/readyz").json()
    assert first["checks"]["background_jobs"] == "ok" and first["status"] == "ready"
    services.runtime.add(Job(name="flaky", run_once=Counter(fail=10**6), interval=0.05, retry=0.01))
    services.runtime.start_job("flaky")
    try:
        assert wait_for(lambda: services.runtime.health("flaky").failures > 0)
        ready = httpx.get(f"{live_server.url}/readyz")
        # Still sent traffic (a failing LDAP sync must not empty the balancer), but it says so.
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["warnings"][0].startswith("flaky failing (")
        assert ready.json()["checks"]["background_jobs"] == "ok"
    finally:
        services.runtime.remove("flaky")
    after = httpx.get(f"{live_server.url}/readyz").json()
    assert after["status"] == "ready" and after["warnings"] == []


def test_a_failed_prepare_fails_the_start_and_leaves_nothing_running(runtime: Runtime) -> None:
    def broken() -> None:
        raise RuntimeError("cannot prepare")

    runtime.add(Job(name="first", run_once=lambda: None, interval=1.0))
    runtime.add(Job(name="second", run_once=lambda: None, interval=1.0, prepare=broken))
    with pytest.raises(RuntimeError, match="cannot prepare"):
        runtime.start()
    assert not runtime.started
    assert not runtime.health("first").running and not runtime.health("second").running

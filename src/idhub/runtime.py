"""The background work of a server process: jobs started, supervised and stopped one way.

A job is a name and a `run_once` callable the runtime repeats every `interval` seconds, early
when its wake-up trigger fires (a listener it registers, or a signal such as SIGHUP), and
sooner than the interval, with jitter and doubling, after it raised. An exception is logged
as one line with the job's name and counted; the job runs again on its next tick. Each job
runs in its own daemon thread so a slow one (an LDAP sync) never holds up another (logout
delivery). `stop` joins every thread within one bound, then runs the jobs' `finish` steps.

The runtime knows nothing of what its jobs do: the composition root gives it the jobs.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

log = logging.getLogger("idhub.runtime")

# The longest a failing job waits before it is retried, whatever its interval.
MAX_RETRY_DELAY = 300.0


@dataclass(frozen=True)
class Job:
    """What to run in the background and when.

    `interval` None: the job runs only when woken. `delay`: before the first run (a short
    pause keeps start-up quick; ignored by wake-only jobs). `wake_on(listener)` registers a
    listener that runs the job at once when called. `prepare` runs in `start` before the
    thread starts (so what it fixes holds as soon as `start` returns); `finish` after the
    thread stopped. `retry`: the first retry delay after an exception, doubled per failure.
    """

    name: str
    run_once: Callable[[], object]
    interval: float | None
    delay: float = 0.0
    wake_on: Callable[[Callable[[], None]], object] | None = None
    prepare: Callable[[], object] | None = None
    finish: Callable[[], object] | None = None
    retry: float = 5.0


@dataclass(frozen=True)
class JobHealth:
    name: str
    running: bool
    last_success_at: float | None
    last_error: str | None
    failures: int  # consecutive; 0 after a success


@dataclass
class _Slot:
    job: Job
    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    listening: bool = False
    last_success_at: float | None = None
    last_error: str | None = None
    failures: int = 0


class Runtime:
    def __init__(
        self,
        *,
        now: Callable[[], float] = time.time,
        join_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self._now = now
        self._join_timeout = join_timeout
        self._random = rng or random.Random()  # noqa: S311 - jitter, not security
        self._slots: dict[str, _Slot] = {}
        self._signals: dict[int, list[str]] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.started = False

    # ------------------------------------------------------------------ registration

    def add(self, job: Job) -> None:
        if job.name in self._slots:
            raise ValueError(f"a background job named {job.name!r} is already registered")
        self._slots[job.name] = _Slot(job)

    def replace(self, job: Job) -> None:
        """Swaps the definition of a registered, stopped job (its health is kept)."""
        slot = self._slots[job.name]
        if self._alive(slot):
            raise RuntimeError(f"background job {job.name!r} is running")
        slot.job = job

    def remove(self, name: str) -> None:
        self.stop_job(name)
        del self._slots[name]

    def on_signal(self, signum: int, job_name: str) -> None:
        """While the runtime runs, `signum` wakes `job_name` (the job does the work, off the
        signal handler, which only sets an event)."""
        self._signals.setdefault(signum, []).append(job_name)

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def job(self, name: str) -> Job:
        return self._slots[name].job

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        try:
            for name in self._slots:
                self.start_job(name)
        except BaseException:
            # A job that cannot even prepare fails the start; nothing is left running.
            self.stop()
            raise
        for signum in self._signals:
            try:
                self._previous_handlers[signum] = signal.signal(signum, self.handle_signal)
            except (ValueError, OSError):
                log.debug("signal %s handler not installed outside the main thread", signum)

    def stop(self) -> None:
        for signum, previous in self._previous_handlers.items():
            try:
                signal.signal(signum, previous)
            except (ValueError, OSError):
                log.debug("signal %s handler not restored outside the main thread", signum)
        self._previous_handlers = {}
        self._stop_slots(list(self._slots.values()), self._join_timeout)
        self.started = False

    def start_job(self, name: str) -> None:
        slot = self._slots[name]
        if self._alive(slot):
            return
        job = slot.job
        if job.wake_on is not None and not slot.listening:
            # Listeners cannot be taken back, so one is registered per job and process.
            job.wake_on(slot.wake.set)
            slot.listening = True
        if job.prepare is not None:
            job.prepare()
        slot.stop.clear()
        slot.wake.clear()
        slot.thread = threading.Thread(
            target=self._loop, args=(slot,), name=f"idhub-{name}", daemon=True
        )
        slot.thread.start()

    def stop_job(self, name: str, timeout: float | None = None) -> None:
        self._stop_slots([self._slots[name]], self._join_timeout if timeout is None else timeout)

    def _stop_slots(self, slots: list[_Slot], timeout: float) -> None:
        for slot in slots:
            slot.stop.set()
            slot.wake.set()
        deadline = time.monotonic() + timeout
        stopped = []
        for slot in slots:
            thread = slot.thread
            if thread is None:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("background job %s did not stop within %.1fs", slot.job.name, timeout)
            slot.thread = None
            stopped.append(slot)
        for slot in reversed(stopped):
            if slot.job.finish is not None:
                try:
                    slot.job.finish()
                except Exception as exc:  # one job's cleanup must not skip the others'
                    log.warning(
                        "background job %s: finishing failed: %s", slot.job.name, _brief(exc)
                    )

    def wake(self, name: str) -> None:
        self._slots[name].wake.set()

    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        for name in self._signals.get(signum, ()):
            self._slots[name].wake.set()

    def check_stopping(self, name: str) -> bool:
        """True once `name` was asked to stop: a long `run_once` may end its round early."""
        slot = self._slots.get(name)
        return slot is None or slot.stop.is_set()

    # ------------------------------------------------------------------ the loop

    def _loop(self, slot: _Slot) -> None:
        job = slot.job
        timeout = None if job.interval is None else job.delay
        while True:
            slot.wake.wait(timeout)
            slot.wake.clear()
            if slot.stop.is_set():
                return
            ok = self._run(slot)
            if job.interval is None:
                timeout = None
            elif ok:
                timeout = job.interval
            else:
                timeout = self.retry_delay(job, slot.failures)

    def _run(self, slot: _Slot) -> bool:
        try:
            slot.job.run_once()
        except Exception as exc:  # a job outlives a database hiccup; it runs again later
            slot.failures += 1
            slot.last_error = _brief(exc)
            log.warning(
                "background job %s failed (%d in a row): %s",
                slot.job.name,
                slot.failures,
                slot.last_error,
            )
            return False
        slot.failures = 0
        slot.last_error = None
        slot.last_success_at = self._now()
        return True

    def retry_delay(self, job: Job, failures: int) -> float:
        """Doubling from `job.retry`, never past the interval or MAX_RETRY_DELAY, with jitter
        so the replicas that failed together do not retry together."""
        ceiling = min(job.interval or MAX_RETRY_DELAY, MAX_RETRY_DELAY)
        base = min(ceiling, job.retry * 2.0 ** max(0, failures - 1))
        return base * self._random.uniform(0.8, 1.0)

    # ------------------------------------------------------------------ health

    def health(self, name: str) -> JobHealth:
        slot = self._slots[name]
        return JobHealth(
            name=name,
            running=self._alive(slot),
            last_success_at=slot.last_success_at,
            last_error=slot.last_error,
            failures=slot.failures,
        )

    def readiness_of(self, name: str, *, stopped: str | None = None) -> str:
        """`ok`, or why `name` stops this process from serving: stopped while the runtime runs.
        A process that never started the runtime (the CLI) is not unready. A job that runs but
        fails is a warning (`warnings`), not a reason to take the replica out of the balancer:
        LDAP or a sink being down must not take every replica out at once."""
        if name not in self._slots:
            return "ok"
        if self.started and not self.health(name).running:
            return stopped or f"{name} stopped"
        return "ok"

    def readiness(self, names: Iterable[str] | None = None) -> str:
        """`ok`, or every job that is stopped, one after another."""
        problems = [
            state
            for state in (self.readiness_of(name) for name in (names or self._slots))
            if state != "ok"
        ]
        return "; ".join(problems) or "ok"

    def warnings(self) -> list[str]:
        """Every job whose last run failed, with the error: shown by `/readyz`, not failing it."""
        found = []
        for name in list(self._slots):
            health = self.health(name)
            if health.failures:
                found.append(f"{name} failing ({health.failures} in a row): {health.last_error}")
        return found

    @staticmethod
    def _alive(slot: _Slot) -> bool:
        return slot.thread is not None and slot.thread.is_alive()


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__

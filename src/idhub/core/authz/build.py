"""Building a policy off to the side: load, check against the directory, run the policy tests
and compile the index, without touching what is serving. Used by reloads and by the CLI."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

from idhub.core.authz.canonical import canonical_directory, canonical_policy
from idhub.core.authz.checks import check_loaded
from idhub.core.authz.engine import Engine, RuleIndex
from idhub.core.authz.model import DirectorySnapshot, Issue, PolicySet
from idhub.core.authz.testing import run_policy_tests
from idhub.core.heap import give_back_freed_memory
from idhub.errors import IdhubError

Loader = Callable[[], tuple[PolicySet, list[Issue]]]


@dataclass(frozen=True)
class Outcome:
    """The result of preparing a policy: the engine if it may serve, and why not otherwise."""

    engine: Engine | None
    policy: PolicySet | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    failed_tests: tuple[str, ...] = ()
    tests_run: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.engine is not None


def prepare_policy(
    load: Loader,
    directory: DirectorySnapshot,
    domains: tuple[str, ...],
    *,
    warm: bool = True,
) -> Outcome:
    """Loads, checks, tests and compiles a policy without touching what is serving."""
    # A large policy allocates millions of small objects that all stay alive; the cyclic
    # collector would rescan them over and over (measured: 40% of a 100,000-line load).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _prepare(load, directory, domains, warm=warm)
    finally:
        if collecting:
            gc.enable()
        # The parse, the checks and the policy tests are garbage now (the old engine too, once
        # the caller swaps): pages glibc would otherwise keep for later go back to the OS.
        give_back_freed_memory()


def _prepare(
    load: Loader, directory: DirectorySnapshot, domains: tuple[str, ...], *, warm: bool
) -> Outcome:
    started = time.perf_counter()
    try:
        policy, issues = load()
        # Checks, tests and the index all see the one spelling requests are matched in.
        policy = canonical_policy(policy)
    except IdhubError as exc:
        return Outcome(None, None, errors=(str(exc),), seconds=time.perf_counter() - started)
    directory = canonical_directory(directory)
    issues = check_loaded(policy, issues, domains, directory)
    errors = tuple(str(i) for i in issues if i.level == "error")
    warnings = tuple(str(i) for i in issues if i.level == "warning")
    if errors:
        return Outcome(None, policy, errors, warnings, seconds=time.perf_counter() - started)
    index = RuleIndex(policy.rules)
    results = run_policy_tests(policy, domains, index=index)
    failed = tuple(str(r) for r in results if not r.passed)
    if failed:
        return Outcome(
            None, policy, (), warnings, failed, len(results), time.perf_counter() - started
        )
    engine = Engine(policy, directory, domains, index=index)
    if warm:
        engine.warm()
    return Outcome(engine, policy, (), warnings, (), len(results), time.perf_counter() - started)

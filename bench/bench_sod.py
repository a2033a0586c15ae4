"""Segregation of duties at enterprise size (issue 13's goals).

The company of bench/bench_authz.py (20,000 users, 2,000 departments, 1,000 roles, 100,000
policy lines, 20,000 static links plus group/department/manager rules), real files and a real
SQLite directory, plus a `sod.yaml` with 50 conflict rules (role and permission sides, a fifth
of them `scope: department`) and 10 `records` rules. Measures, medians of --runs:

  analysis   the full static analysis over every user (`core/authz/sod_analysis.py`), on an
             engine whose roles are warm (the state a serving replica is in) and on a cold
             one (roles computed by the analysis itself); beside it, the same question
             answered naively (per user and side, scanning the user's lines) on a sample of
             users, extrapolated: the ratio is what sharing work between users with the same
             roles buys
  reload     `AuthzService.reload` with and without sod.yaml (the analysis is in the gate)
  decision   `PolicyAnswers.decide` p50 on the same 5,000 allowed questions without and with
             `actors`, interleaved rounds; the difference is what dynamic SoD adds
  sync       the segregation-of-duties review of a directory sync plan of 1,000 moves
             (`core/authz/sod_sync.py`: the directory copied, the moves applied, the policy
             compiled against it, the movers analysed before and after)

Usage: python bench/bench_sod.py [--quick] [--runs N] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_authz as company  # noqa: E402  (the same generated company)

RULES = 50
RECORD_RULES = 10
NOW = 1_800_000_000.0


def write_sod(root: Path, size: dict[str, int], rnd: random.Random) -> None:
    roles = [f"role{i}" for i in range(size["roles"])]
    types = [f"type{i}" for i in range(size["types"])]
    out = ["conflicts:"]
    for i in range(RULES):
        sides = []
        for _ in range(2):
            dom = rnd.choice(company.DOMAINS)
            if rnd.random() < 0.5:
                sides.append(f"{dom}:{rnd.choice(roles)}")
            else:
                sides.append(f"{dom}:{rnd.choice(types)}:{rnd.choice(company.ACTIONS)}")
        if sides[0] == sides[1]:
            sides[1] = f"{company.DOMAINS[0]}:role{i}"
        scope = "\n    scope: department" if i % 5 == 0 else ""
        out.append(
            f"  - id: rule{i}\n    severity: warn\n    reason: synthetic{scope}\n"
            f"    sides: [{', '.join(sides)}]"
        )
    out.append("records:")
    for i in range(RECORD_RULES):
        out.append(
            f"  - id: steps{i}\n    reason: synthetic\n    domain: {company.DOMAINS[i % 4]}\n"
            f"    type: type{i}\n    owner: created_by\n"
            "    steps: {created_by: [create, update], approved_by: [approve, reject], "
            "exported_by: [export]}"
        )
    (root / "sod.yaml").write_text("\n".join(out) + "\n", encoding="utf-8")


def naive_held(engine: Any, username: str, sides: list[Any]) -> int:
    """Sides held by one user, asked the plain way: their roles, then every line."""
    from idhub.core.authz.model import ANY, user_subject

    subject = user_subject(username)
    held = 0
    for side in sides:
        roles = engine.roles_of(subject, side.domain)
        if side.is_role:
            held += side.role in roles
            continue
        names = {subject, *roles}
        held += any(
            r.subject in names
            and r.effect == "allow"
            and r.domain in (side.domain, ANY)
            and r.obj in (side.obj, ANY)
            and r.act in (side.act, ANY)
            for r in engine.policy.rules
        )
    return held


def phase(work: Path, runs: int) -> dict[str, Any]:
    from idhub.core.authz.decisions import PolicyAnswers, Question
    from idhub.core.authz.engine import Engine
    from idhub.core.authz.sod_analysis import analyse

    services = company.make_service(work)
    authz = services.authz
    with_sod, without_sod = [], []
    sod_file = work / "policies" / "sod.yaml"
    text = sod_file.read_text(encoding="utf-8")
    for _ in range(runs):
        started = time.perf_counter()
        outcome = authz.reload(trigger="bench")
        with_sod.append(time.perf_counter() - started)
        assert outcome.ok, outcome.errors[:3]
        sod_file.unlink()
        started = time.perf_counter()
        assert authz.reload(trigger="bench").ok
        without_sod.append(time.perf_counter() - started)
        sod_file.write_text(text, encoding="utf-8")
    assert authz.reload(trigger="bench").ok
    engine = authz.engine
    assert engine.policy.sod is not None
    engine.warm()
    warm, cold, found = [], [], 0
    for _ in range(runs):
        started = time.perf_counter()
        report = analyse(engine, now=NOW)
        warm.append(time.perf_counter() - started)
        found = len(report.violations)
        fresh = Engine(engine.policy, engine.directory, engine.domains, index=engine.index)
        started = time.perf_counter()
        analyse(fresh, now=NOW)
        cold.append(time.perf_counter() - started)
    sides = [s for rule in engine.policy.sod.conflicts for s in rule.sides]
    sample = sorted(engine.directory.users)[:10]
    started = time.perf_counter()
    for username in sample:
        naive_held(engine, username, sides)
    naive_per_user = (time.perf_counter() - started) / len(sample)
    naive_total = naive_per_user * len(engine.directory.users)

    # Decisions without and with actors on the same questions: allowed ones (a denial is
    # never looked at again), on the (domain, type) of a records rule, actors that conflict
    # with nobody, so every call walks the whole rule.
    answers = PolicyAnswers(engine, authz)
    rnd = random.Random(3)
    users = sorted(engine.directory.users)
    plain: list[Question] = []
    tries = 0
    while len(plain) < 5000 and tries < 2_000_000:
        tries += 1
        i = rnd.randrange(RECORD_RULES)
        question = Question(
            company.DOMAINS[i % 4],
            f"type{i}",
            rnd.choice(company.ACTIONS),
            user=rnd.choice(users),
            owner=rnd.choice(users),
            canonical=True,
        )
        if answers.decide(question).allowed:
            plain.append(question)
    actors = (("approved_by", ("nobody1",)), ("created_by", ("nobody2", "nobody3")))
    with_actors = [dataclasses.replace(q, actors=actors) for q in plain]
    assert all(answers.decide(q).allowed for q in with_actors)
    p50_plain, p50_actors = [], []
    for _ in range(runs * 3):
        for batch, out in ((plain, p50_plain), (with_actors, p50_actors)):
            lat = []
            for q in batch:
                t0 = time.perf_counter_ns()
                answers.decide(q)
                lat.append(time.perf_counter_ns() - t0)
            out.append(statistics.median(lat) / 1000)
    from idhub.core.authz.sod_sync import SyncDutyReviewer
    from idhub.core.directory.plan import UserChange

    paths = sorted(engine.directory.departments)
    movers = rnd.sample(users, 1000)
    moves = [
        UserChange(
            "move",
            f"ext-{name}",
            name,
            {"department": (engine.directory.users[name].department, rnd.choice(paths))},
            user_id=1,
            entry=None,
        )
        for name in movers
    ]
    moves = [
        dataclasses.replace(m, entry=_entry(m.username, str(m.fields["department"][1])))
        for m in moves
    ]
    reviewer = SyncDutyReviewer(lambda: engine, now=lambda: NOW)
    review_s, held = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        review = reviewer.review(moves)
        review_s.append(time.perf_counter() - started)
        held = len(review.held_back)
    return {
        "sync_review_1000_moves_s": statistics.median(review_s),
        "sync_review_found": len(review.violations),
        "sync_review_held": held,
        "users": len(engine.directory.users),
        "lines": len(engine.policy.rules),
        "links": len(engine.links),
        "rules": len(engine.policy.sod.conflicts),
        "violations": found,
        "analysis_warm_s": statistics.median(warm),
        "analysis_cold_s": statistics.median(cold),
        "naive_estimate_s": naive_total,
        "ratio_naive": naive_total / statistics.median(warm),
        "reload_with_sod_s": statistics.median(with_sod),
        "reload_without_sod_s": statistics.median(without_sod),
        "questions": len(plain),
        "decide_p50_us": statistics.median(p50_plain),
        "decide_actors_p50_us": statistics.median(p50_actors),
        "actors_add_p50_us": statistics.median(p50_actors) - statistics.median(p50_plain),
        "load_average": os.getloadavg()[0],
    }


def _entry(username: str, department: str) -> Any:
    from idhub.core.directory.mapping import SourceUser

    return SourceUser(
        external_id=f"ext-{username}",
        dn=f"uid={username},ou=people",
        username=username,
        display_name="",
        email=None,
        phone=None,
        employee_id=None,
        department=department,
        disabled=False,
        modified=None,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", help="keep the generated company here")
    args = parser.parse_args()
    size = company.sizes(args.quick)
    with tempfile.TemporaryDirectory(prefix="idhub-bench-sod-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(1)
        if not (work / "policies" / "sod.yaml").exists():
            company.write_policy(work / "policies", size, rnd)
            company.write_directory(f"sqlite:///{work / 'idhub.db'}", size, rnd)
            write_sod(work / "policies", size, random.Random(2))
        result = phase(work, args.runs)
    print(json.dumps(result, indent=2))
    print(f"{'operation':52} result")
    print(
        f"{'full SoD analysis, roles warm':52} {result['analysis_warm_s']:.2f} s "
        f"({result['users']} users, {result['rules']} rules, {result['violations']} violations)"
    )
    print(f"{'full SoD analysis, roles cold':52} {result['analysis_cold_s']:.2f} s")
    print(
        f"{'naive per-user evaluation (extrapolated)':52} {result['naive_estimate_s']:.0f} s "
        f"(x{result['ratio_naive']:.0f})"
    )
    print(
        f"{'reload with / without sod.yaml':52} {result['reload_with_sod_s']:.2f} s / "
        f"{result['reload_without_sod_s']:.2f} s"
    )
    print(
        f"{'decision p50 without / with actors':52} {result['decide_p50_us']:.2f} / "
        f"{result['decide_actors_p50_us']:.2f} µs (adds {result['actors_add_p50_us']:.2f} µs)"
    )
    print(
        f"{'sync plan review, 1,000 moves':52} {result['sync_review_1000_moves_s']:.2f} s "
        f"({result['sync_review_found']} violations added, {result['sync_review_held']} held)"
    )
    print(f"{'load average':52} {result['load_average']:.1f}")
    goals = result["analysis_cold_s"] <= 5 and result["actors_add_p50_us"] <= 5
    return 0 if goals or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())

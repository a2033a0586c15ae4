"""What a sign-in through an upstream OpenID Connect provider costs idhub itself (the network
round trips to the provider are the provider's), each figure the median of several runs:

  id token   `validate_id_token` (RS256 signature, iss/aud/azp/exp/iat/nonce/sub, key chosen
             by kid) per token, against plain joserfc `jwt.decode` + `JWTClaimsRegistry` on
             the same token in the same run
  account    `users_matching` (the canonical email / username lookup of the account mapping)
             on a directory of N users, SQLite and PostgreSQL, against the indexed exact
             `get_user_by_username` on the same database

Usage: python bench/bench_upstream_oidc.py [--users N] [--runs N] [--tokens N] [--no-pg]
Traffic goes only to 127.0.0.1; the databases are throwaway ones, dropped after.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import create_engine, insert, text

from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.adapters.db import users
from idhub.adapters.identity_store import SqlIdentityStore
from idhub.adapters.upstream_id_token import ProviderKeys, validate_id_token
from idhub.config import DatabaseSettings
from idhub.core.clock import SystemClock

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
ISSUER = "https://login.parent.example"


def median_rate(runs: int, count: int, once: Callable[[], None]) -> float:
    """Median microseconds per call over `runs` runs of `count` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            once()
        times.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(times)


def bench_tokens(runs: int, count: int) -> list[tuple[str, float, float]]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    now = time.time()
    claims = {"iss": ISSUER, "aud": "c", "sub": "u-1", "nonce": "n", "iat": int(now)}
    token = jwt.encode({"alg": "RS256", "kid": "k1"}, {**claims, "exp": int(now) + 600}, key)
    published = KeySet([key]).as_dict(private=False)
    keys = ProviderKeys(lambda: published, SystemClock())
    plain_keys = KeySet.import_key_set(published)  # type: ignore[arg-type]
    registry = jwt.JWTClaimsRegistry(
        leeway=60,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": "c"},
        nonce={"essential": True, "value": "n"},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    )

    def ours() -> None:
        validate_id_token(
            token,
            keys=keys,
            issuer=ISSUER,
            client_id="c",
            nonce="n",
            algorithms=("RS256",),
            now=time.time(),
            skew=60,
        )

    def plain() -> None:
        registry.validate(jwt.decode(token, plain_keys, algorithms=["RS256"]).claims)

    ours()
    plain()
    base = median_rate(runs, count, plain)
    mine = median_rate(runs, count, ours)
    return [("ID token check (RS256), µs", mine, base)]


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    name = f"idhub_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_lookup(kind: str, count: int, runs: int) -> list[tuple[str, float, float]]:
    with database(kind) as url:
        engine = create_db_engine(DatabaseSettings(url=url))
        apply_migrations(engine)
        now = time.time()
        rows: list[dict[str, Any]] = [
            {
                "sub": secrets.token_hex(16),
                "username": f"user{i:06d}",
                "display_name": f"User {i}",
                "email": f"User{i:06d}@Example.com",
                "employee_id": f"E{i:06d}",
                "source": "local",
                "attributes": {},
                "disabled": False,
                "failed_logins": 0,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(count)
        ]
        with engine.begin() as conn:
            for start in range(0, count, 1000):
                conn.execute(insert(users), rows[start : start + 1000])
        store = SqlIdentityStore(engine, SystemClock())
        picks = [f"user{i:06d}" for i in range(0, count, max(1, count // 50))]
        turn = iter(range(10**9))

        def by_email() -> None:
            who = picks[next(turn) % len(picks)]
            assert len(store.users_matching("email", f"{who}@example.com", limit=5)) == 1

        def by_username() -> None:
            who = picks[next(turn) % len(picks)]
            assert len(store.users_matching("username", who.upper(), limit=5)) == 1

        def exact() -> None:
            who = picks[next(turn) % len(picks)]
            assert store.get_user_by_username(who) is not None

        base = median_rate(runs, 50, exact)
        out = [
            (
                f"{kind}: users_matching email, {count:,} users, µs",
                median_rate(runs, 50, by_email),
                base,
            ),
            (
                f"{kind}: users_matching username, {count:,} users, µs",
                median_rate(runs, 50, by_username),
                base,
            ),
        ]
        engine.dispose()
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    results = bench_tokens(args.runs, args.tokens)
    for kind in ("sqlite", *(() if args.no_pg else ("postgresql",))):
        results += bench_lookup(kind, args.users, args.runs)
    print(f"{'operation':<58} {'median':>10} {'baseline':>10} {'ratio':>6}")
    for name, mine, base in results:
        print(f"{name:<58} {mine:>10.0f} {base:>10.0f} {mine / base:>5.1f}x")
    with open("/proc/loadavg", encoding="ascii") as load:
        print("load average:", " ".join(load.read().split()[:3]))


if __name__ == "__main__":
    main()

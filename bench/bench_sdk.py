"""`idhub.sdk.TokenValidator` on one core with the JWKS cached, against the peers measured in
the same run: the raw signature verify (`cryptography`, the floor no validator can beat) and
a generic JOSE library (joserfc `jwt.decode` plus its claims registry, the usual way).

For each algorithm idhub signs access tokens with (RS256, ES256, EdDSA): COUNT distinct
tokens shaped like idhub's (same claims, same header) are validated once each ("distinct":
parse, signature, every claim check, cache insert), then already-seen tokens are validated
again ("seen": the cache of validated tokens). Rates are per CPU second of this thread
(`time.thread_time`), so a busy machine slows the wall clock but not the figures much; each
row is the median of RUNS runs. No network: the JWKS is served by an in-process transport.

    .venv/bin/python bench/bench_sdk.py [--count 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt
from joserfc.jwk import KeySet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from idhub.oidc.jws import b64url, b64url_decode, sign
from idhub.sdk import TokenValidator

ISSUER = "https://sso.example.com"
AUDIENCE = "reimburse"
# Goals from issue 14 (per second, one core).
GOALS = {"distinct RS256": 20_000, "seen": 1_000_000}
ALGS = ("RS256", "ES256", "EdDSA")


def keys() -> dict[str, tuple[Any, dict[str, Any]]]:
    """alg -> (private key, public JWK)."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = r.public_key().public_numbers()
    out["RS256"] = (
        r,
        {
            "kty": "RSA",
            "kid": "rs",
            "alg": "RS256",
            "use": "sig",
            "n": b64url(n.n.to_bytes(256, "big")),
            "e": b64url(n.e.to_bytes(3, "big")),
        },
    )
    e = ec.generate_private_key(ec.SECP256R1())
    p = e.public_key().public_numbers()
    out["ES256"] = (
        e,
        {
            "kty": "EC",
            "crv": "P-256",
            "kid": "es",
            "alg": "ES256",
            "use": "sig",
            "x": b64url(p.x.to_bytes(32, "big")),
            "y": b64url(p.y.to_bytes(32, "big")),
        },
    )
    d = ed25519.Ed25519PrivateKey.generate()
    raw = d.public_key().public_bytes_raw()
    out["EdDSA"] = (d, {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
                        "use": "sig", "x": b64url(raw)})  # fmt: skip
    return out


def tokens(alg: str, key: Any, kid: str, count: int) -> list[str]:
    now = int(time.time())
    out = []
    for i in range(count):
        claims = {
            "iss": ISSUER, "sub": uuid.uuid4().hex, "aud": AUDIENCE, "client_id": "oa",
            "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex, "scope": "openid profile",
            "auth_time": now - 5, "roles": ["employee"], "policy_version": "5699d227dec0.e96c",
            "preferred_username": f"user{i}", "department": "/总部/华东区/销售一部",
        }  # fmt: skip
        out.append(sign({"typ": "at+jwt", "alg": alg, "kid": kid}, claims, key))
    return out


def cpu_rate(fn: Callable[[], int]) -> float:
    """Operations per CPU second of this thread for one call of `fn` (which returns its count)."""
    started = time.thread_time()
    count = fn()
    return count / max(time.thread_time() - started, 1e-9)


def raw_verify(alg: str, public: Any, items: list[str]) -> Callable[[], int]:
    parts = [(t.rsplit(".", 1)[0].encode(), b64url_decode(t.rsplit(".", 1)[1])) for t in items]

    def run() -> int:
        for data, sig in parts:
            if alg == "RS256":
                public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "ES256":
                der = encode_dss_signature(
                    int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
                )
                public.verify(der, data, ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(sig, data)
        return len(parts)

    return run


def joserfc_decode(alg: str, keyset: KeySet, items: list[str]) -> Callable[[], int]:
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        leeway=30,
    )

    def run() -> int:
        for token in items:
            decoded = jwt.decode(token, keyset, algorithms=[alg])
            registry.validate(decoded.claims)
        return len(items)

    return run


def sdk_distinct(jwks: dict[str, Any], items: list[str]) -> Callable[[], int]:
    def run() -> int:
        validator = _validator(jwks, len(items))
        validator.validate(items[0])  # the JWKS fetch, outside what is measured per token
        started = time.thread_time()
        for token in items[1:]:
            validator.validate(token)
        run.elapsed = time.thread_time() - started  # type: ignore[attr-defined]
        return len(items) - 1

    return run


def sdk_seen(jwks: dict[str, Any], items: list[str], calls: int) -> Callable[[], int]:
    validator = _validator(jwks, len(items))
    seen = items[:1000]
    for token in seen:
        validator.validate(token)
    rounds = max(1, calls // len(seen))

    def run() -> int:
        validate = validator.validate
        for _ in range(rounds):
            for token in seen:
                validate(token)
        return rounds * len(seen)

    return run


def _validator(jwks: dict[str, Any], size: int) -> TokenValidator:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    return TokenValidator(
        ISSUER,
        audience=AUDIENCE,
        jwks_uri=ISSUER + "/jwks",
        http=httpx.Client(transport=transport),
        cache_size=size + 10,
    )


def distinct_rate(fn: Callable[[], int]) -> float:
    count = fn()
    return count / max(fn.elapsed, 1e-9)  # type: ignore[attr-defined]


def median_rate(measure: Callable[[], float], runs: int) -> float:
    return statistics.median(measure() for _ in range(runs))


HEADER = f"{'operation':<38} {'per second':>12} {'µs each':>9}  {'vs raw':>8}  {'vs joserfc':>10}"


def measure_alg(
    alg: str,
    public: Any,
    jwks: dict[str, Any],
    keyset: KeySet,
    items: list[str],
    args: argparse.Namespace,
) -> float:
    """Prints the three rows of one algorithm; returns the SDK's distinct-token rate."""
    raw = median_rate(lambda: cpu_rate(raw_verify(alg, public, items)), args.runs)
    generic = median_rate(lambda: cpu_rate(joserfc_decode(alg, keyset, items)), args.runs)
    distinct = median_rate(lambda: distinct_rate(sdk_distinct(jwks, items)), args.runs)
    for name, rate in (
        (f"{alg} raw verify (cryptography)", raw),
        (f"{alg} joserfc decode + claims", generic),
        (f"{alg} idhub.sdk, distinct tokens", distinct),
    ):
        print(
            f"{name:<38} {rate:>12,.0f} {1e6 / rate:>9.1f}  {rate / raw:>7.2f}x"
            f"  {rate / generic:>9.2f}x"
        )
    return distinct


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000, help="distinct tokens per algorithm")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seen-calls", type=int, default=300_000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="EdDSA is deprecated")

    material = keys()
    jwks = {"keys": [jwk for _key, jwk in material.values()]}
    keyset = KeySet.import_key_set(jwks)
    load_before = os.getloadavg()
    print(HEADER)
    rows: dict[str, float] = {}
    items: list[str] = []
    for alg in ALGS:
        private, jwk = material[alg]
        items = tokens(alg, private, jwk["kid"], args.count)
        rows[f"distinct {alg}"] = measure_alg(alg, private.public_key(), jwks, keyset, items, args)
    seen = median_rate(lambda: cpu_rate(sdk_seen(jwks, items, args.seen_calls)), args.runs)
    rows["seen"] = seen
    print(f"{'idhub.sdk, token already seen':<38} {seen:>12,.0f} {1e6 / seen:>9.2f}")
    load_after = os.getloadavg()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(
        f"load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} cores; medians of {args.runs} runs, {args.count} tokens each"
    )
    missed = [f"{name} {rows[name]:,.0f}/s < {goal:,}/s" for name, goal in GOALS.items()
              if rows[name] < goal]  # fmt: skip
    if missed:
        print("below goal: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

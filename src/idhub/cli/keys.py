"""`idhub keys list|rotate`: idhub's signing keys."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.oidc.keys import ALGS


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = keys_sub.add_parser("list", help="list signing keys and whether they are published")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = keys_sub.add_parser(
        "rotate", help="add a new active key; the old one stays in JWKS until its tokens expired"
    )
    p.add_argument("--alg", choices=ALGS, action="append", help="only this algorithm (repeatable)")
    p.set_defaults(func=cmd_rotate)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    now = services.clock.now()
    keys = services.keys.list()
    rows = []
    for key in keys:
        published = key.expires_at is None or key.expires_at > now
        status = key.status if published else "expired"
        rows.append((key.kid, key.alg, status, key.created_at, key.retired_at, key.expires_at))
    if args.json:
        print_json(
            [
                {
                    "kid": kid,
                    "alg": alg,
                    "status": status,
                    "created_at": created,
                    "retired_at": retired,
                    "published_until": expires,
                }
                for kid, alg, status, created, retired, expires in rows
            ]
        )
        return 0
    if not rows:
        print("no signing keys yet; run `idhub init`")
        return 0
    print_table(
        ["kid", "alg", "status", "created", "retired", "in JWKS until"],
        [(r[0], r[1], r[2], _when(r[3]), _when(r[4]), _when(r[5])) for r in rows],
    )
    return 0


def cmd_rotate(args: argparse.Namespace, ctx: CliContext) -> int:
    algs = tuple(args.alg) if args.alg else ALGS
    for alg, kid, retired in ctx.services.keys.rotate(algs, actor=Actor("admin", "cli")):
        note = (
            f"; retired {', '.join(retired)} (kept in JWKS until its tokens expired)"
            if retired
            else ""
        )
        print(f"{alg}: new active key {kid}{note}")
    return 0

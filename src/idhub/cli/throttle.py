"""`idhub throttle status|clear`: the sign-in and client-authentication throttle's counters
(shared by every replica through the database), and ending a lock by address, user or client."""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.cli.users import ADMIN, _require, apply_unlock
from idhub.core.audit import EventType
from idhub.core.throttle import CLIENT, ThrottleKey, client_key, source_of
from idhub.errors import InvalidInput


def register(sub: Any) -> None:
    throttle = sub.add_parser("throttle", help="sign-in and client-authentication throttle")
    throttle_sub = throttle.add_subparsers(dest="throttle_command", metavar="ACTION", required=True)

    p = throttle_sub.add_parser("status", help="show failure counters, locked ones first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = throttle_sub.add_parser("clear", help="end a lock: of an address, a user or a client")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ip", help="an address (IPv6: its /64)")
    target.add_argument("--user", help="a username (same as `idhub user unlock`)")
    target.add_argument("--client", help="a client id (with --from: only from that address)")
    p.add_argument("--from", dest="source", help="the address a --client was tried from")
    p.set_defaults(func=cmd_clear)


def cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    now = services.clock.now()
    rows = []
    for counter, refusal in services.throttle.active(limit=args.limit):
        rows.append(
            {
                "kind": counter.kind,
                "key": _shown(ctx, counter.value),
                "failures": counter.failures,
                "locked": bool(refusal and refusal.locked),
                "retry_after": round(refusal.retry_after) if refusal else 0,
                "last_failed_ago": round(now - counter.last_failed_at),
            }
        )
    if args.json:
        print_json({"counters": rows})
        return 0
    if not rows:
        print("no failure counters")
        return 0
    print_table(
        ["kind", "key", "failures", "state", "last failure"],
        [
            [
                r["kind"],
                r["key"],
                r["failures"],
                f"locked {r['retry_after']}s"
                if r["locked"]
                else (f"delayed {r['retry_after']}s" if r["retry_after"] else "counting"),
                f"{r['last_failed_ago']}s ago",
            ]
            for r in rows
        ],
    )
    return 0


def _shown(ctx: CliContext, value: str) -> str:
    """`user:<id>` as the username; a fingerprint of an unknown name stays a fingerprint."""
    if value.startswith("user:") and value[5:].isdigit():
        user = ctx.services.identity.get_user(int(value[5:]))
        if user is not None:
            return f"user {user.username}"
    return value


def cmd_clear(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    if args.user:
        removed = apply_unlock(ctx, _require(ctx, args.user))
        print(f"cleared {removed} counter(s) of user {args.user}")
        return 0
    if args.ip:
        source = source_of(args.ip)
        if source is None:
            raise InvalidInput(f"{args.ip!r} is not an IP address")
        scope, target = "ip", source
    else:
        if args.source is None:
            raise InvalidInput("--client needs --from ADDRESS (client counters are per address)")
        source = source_of(args.source)
        if source is None:
            raise InvalidInput(f"{args.source!r} is not an IP address")
        target = client_key(args.client, source)
        scope = "client"
    # The clearing commits with its audit event (core/transactions.py).
    with services.unit_of_work.atomic() as tx:
        if scope == "ip":
            removed = services.throttle.apply_clear_source(args.ip)
        else:
            removed = services.throttle.apply_clear([ThrottleKey(CLIENT, target)])
        tx.record(
            EventType.THROTTLE_CLEARED,
            actor=ADMIN,
            target=target,
            details={"scope": scope, "counters": removed},
        )
    print(f"cleared {removed} counter(s) of {scope} {target}")
    return 0

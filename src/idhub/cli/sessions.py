"""`idhub session list|revoke|deliveries`: see a user's SSO sessions and log them out everywhere."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.core.identity import User
from idhub.errors import NotFound


def register(sub: Any) -> None:
    session = sub.add_parser("session", help="SSO sessions and logout")
    session_sub = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)

    p = session_sub.add_parser("list", help="a user's active SSO sessions")
    p.add_argument("--user", required=True, metavar="USERNAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = session_sub.add_parser(
        "revoke", help="log a user out everywhere (sessions, refresh tokens, back-channel logout)"
    )
    p.add_argument("--user", required=True, metavar="USERNAME")
    p.add_argument("--reason", default="revoked by an admin")
    p.set_defaults(func=cmd_revoke)

    p = session_sub.add_parser("deliveries", help="back-channel logout deliveries")
    p.add_argument("--status", choices=("pending", "delivered", "failed"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deliveries)


def _user(ctx: CliContext, username: str) -> User:
    user = ctx.services.identity.get_user_by_username(username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    user = _user(ctx, args.user)
    sessions = ctx.services.sessions.active_for_user(user.id)
    if args.json:
        print_json(
            [
                {
                    "sid": s.sid,
                    "auth_time": s.auth_time,
                    "expires_at": s.expires_at,
                    "amr": list(s.amr),
                    "clients": list(s.clients),
                    "ip": s.ip,
                }
                for s in sessions
            ]
        )
        return 0
    print_table(
        ["sid", "signed in", "expires", "clients", "ip"],
        [
            [s.sid, _when(s.auth_time), _when(s.expires_at), ", ".join(s.clients), s.ip]
            for s in sessions
        ],
    )
    return 0


def cmd_revoke(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    user = _user(ctx, args.user)
    ended = services.logout.logout_user_everywhere(
        user.id, reason=args.reason, actor=Actor("admin", "cli")
    )
    print(
        f"logged {user.username} out everywhere: ended {ended} session(s), refresh tokens revoked"
    )
    # One attempt now; what fails stays queued for the server's delivery worker to retry.
    delivered, failed = services.logout.deliver_due()
    if delivered or failed:
        print(f"back-channel logout: {delivered} delivered, {failed} queued for retry")
    return 0


def cmd_deliveries(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = ctx.services.logout_deliveries.list(status=args.status, limit=args.limit)
    if args.json:
        print_json([row.__dict__ for row in rows])
        return 0
    print_table(
        ["id", "client", "status", "attempts", "created", "last error"],
        [
            [d.id, d.client_id, d.status, d.attempts, _when(d.created_at), d.last_error or ""]
            for d in rows
        ],
    )
    return 0

"""`idhub user add|list|show|disable|enable|unlock|set-password|mfa`: local accounts for admins.

Passwords are read from a terminal prompt (typed twice) or from standard input with
`--password-stdin`; never from the command line, where they would land in shell history and in
`ps` output. They are set through `services.local_passwords`, which applies the password policy
(length, the common-password list, the last N passwords).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.cli.links import register_user_commands
from idhub.core.audit import Actor, EventType
from idhub.core.identity import LOCAL_SOURCE, User, require_department
from idhub.errors import InvalidInput, NotFound

ADMIN = Actor("admin", "cli")


def register(sub: Any) -> None:
    user = sub.add_parser("user", help="manage local user accounts")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    p = user_sub.add_parser("add", help="create a local user")
    p.add_argument("username")
    p.add_argument("--name", default="", help="display name, e.g. 王小丽")
    p.add_argument("--email")
    p.add_argument("--phone")
    p.add_argument("--employee-id")
    p.add_argument("--department", help="department path, e.g. /总部/华东区/销售一部")
    p.add_argument(
        "--create-department",
        action="store_true",
        help="create the --department path if it does not exist (otherwise refused)",
    )
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.add_argument("--no-password", action="store_true", help="create without a password")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_add)

    p = user_sub.add_parser("list", help="list users")
    p.add_argument("--source", help='only users from this source, e.g. "local" or "ldap:corp"')
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = user_sub.add_parser("show", help="show one user")
    p.add_argument("username")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = user_sub.add_parser("disable", help="disable a user and log them out everywhere")
    p.add_argument("username")
    p.add_argument("--reason", default="disabled by an admin")
    p.set_defaults(func=cmd_disable)

    p = user_sub.add_parser("enable", help="enable a disabled user")
    p.add_argument("username")
    p.set_defaults(func=cmd_enable)

    p = user_sub.add_parser(
        "unlock", help="end a lockout of a user's account (too many failed sign-ins)"
    )
    p.add_argument("username")
    p.set_defaults(func=cmd_unlock)

    p = user_sub.add_parser("set-password", aliases=["passwd"], help="set a local user's password")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_set_password)

    register_mfa(user_sub)
    register_user_commands(user_sub)


def read_password(*, from_stdin: bool) -> str:
    """One line from stdin, or a twice-typed password from the terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise InvalidInput("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise InvalidInput("no terminal to ask for the password; pipe it in with --password-stdin")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Repeat password: ")
    if first != second:
        raise InvalidInput("the two passwords differ")
    return first


def _require(ctx: CliContext, username: str) -> User:
    user = ctx.services.identity.get_user_by_username(username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def describe_user(ctx: CliContext, user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "sub": user.sub,
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "phone": user.phone,
        "employee_id": user.employee_id,
        "department": user.department_path,
        "groups": ctx.services.identity.user_groups(user.id),
        "source": user.source,
        "disabled": user.disabled,
        "disabled_reason": user.disabled_reason,
        "locked": user.is_locked(ctx.services.clock.now()),
        "active_sessions": len(ctx.services.sessions.active_for_user(user.id)),
    }


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    department = None
    if args.department:
        department = require_department(
            services.identity, args.department, create=args.create_department
        )
    password_hash = None
    if not args.no_password:
        password = read_password(from_stdin=args.password_stdin)
        password_hash = services.local_passwords.hash_new(password, username=args.username)
    # Each user change commits with its audit event (core/transactions.py).
    with services.unit_of_work.atomic() as tx:
        user = services.identity.create_user(
            username=args.username,
            display_name=args.name,
            email=args.email,
            phone=args.phone,
            employee_id=args.employee_id,
            department_path=department,
            password_hash=password_hash,
        )
        tx.record(
            EventType.USER_CREATED,
            actor=ADMIN,
            target=user.sub,
            details={
                "username": user.username,
                "source": user.source,
                "with_password": bool(password_hash),
            },
        )
    if args.json:
        print_json(describe_user(ctx, user))
    else:
        print(f"created user {user.username} (sub {user.sub})")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    users = ctx.services.identity.list_users(limit=args.limit, source=args.source)
    if args.json:
        print_json([describe_user(ctx, u) for u in users])
        return 0
    print_table(
        ["username", "name", "department", "source", "status"],
        [
            [
                u.username,
                u.display_name,
                u.department_path or "",
                u.source,
                "disabled" if u.disabled else "active",
            ]
            for u in users
        ],
    )
    return 0


def cmd_show(args: argparse.Namespace, ctx: CliContext) -> int:
    info = describe_user(ctx, _require(ctx, args.username))
    if args.json:
        print_json(info)
        return 0
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key}: {'' if value is None else value}")
    return 0


def cmd_disable(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    user = _require(ctx, args.username)
    with services.unit_of_work.atomic() as tx:
        services.identity.set_disabled(user.id, True, reason=args.reason)
        tx.record(
            EventType.USER_DISABLED, actor=ADMIN, target=user.sub, details={"reason": args.reason}
        )
        ended = services.logout.logout_user_everywhere(user.id, reason="user disabled", actor=ADMIN)
    delivered, failed = services.logout.deliver_due()
    print(f"disabled {user.username}; ended {ended} session(s)")
    if delivered or failed:
        print(f"back-channel logout: {delivered} delivered, {failed} to retry")
    return 0


def cmd_enable(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    user = _require(ctx, args.username)
    with services.unit_of_work.atomic() as tx:
        services.identity.set_disabled(user.id, False)
        apply_unlock(ctx, user, audit_always=False)
        tx.record(EventType.USER_ENABLED, actor=ADMIN, target=user.sub)
    print(f"enabled {user.username}")
    return 0


def apply_unlock(ctx: CliContext, user: User, *, audit_always: bool = True) -> int:
    """Clears the user's lock and account counters; returns how many counters existed. Audited
    as `throttle.cleared` (by `enable` and `set-password` only when there was something)."""
    services = ctx.services
    keys = services.authenticator.keys_for(user.username, user, None)
    # The clearing commits with its audit event (core/transactions.py).
    with services.unit_of_work.atomic() as tx:
        removed = services.throttle.apply_clear(keys)
        services.identity.clear_failed_logins(user.id)
        if audit_always or removed:
            tx.record(
                EventType.THROTTLE_CLEARED,
                actor=ADMIN,
                target=user.username,
                details={"scope": "account", "counters": removed},
            )
    return removed


def cmd_unlock(args: argparse.Namespace, ctx: CliContext) -> int:
    user = _require(ctx, args.username)
    locked = user.is_locked(ctx.services.clock.now())
    removed = apply_unlock(ctx, user)
    state = "was locked" if locked else "was not locked"
    print(f"unlocked {user.username} ({state}; {removed} failure counter(s) cleared)")
    return 0


def cmd_set_password(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    user = _require(ctx, args.username)
    if user.source != LOCAL_SOURCE:
        raise InvalidInput(f"{user.username}'s password is kept by {user.source}; change it there")
    password = read_password(from_stdin=args.password_stdin)
    with services.unit_of_work.atomic() as tx:
        services.local_passwords.apply_password(user.id, password, username=user.username)
        apply_unlock(ctx, user, audit_always=False)
        tx.record(EventType.USER_PASSWORD_SET, actor=ADMIN, target=user.sub)
    print(f"password set for {user.username}")
    return 0


# ---------------------------------------------------------------- second factors


def register_mfa(user_sub: Any) -> None:
    mfa = user_sub.add_parser("mfa", help="a person's second factors")
    mfa_sub = mfa.add_subparsers(dest="mfa_command", metavar="ACTION", required=True)

    p = mfa_sub.add_parser("show", help="which second factors a person has")
    p.add_argument("username")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mfa_show)

    p = mfa_sub.add_parser(
        "reset", help="remove every second factor and remembered browser (lost phone)"
    )
    p.add_argument("username")
    p.set_defaults(func=cmd_mfa_reset)

    p = mfa_sub.add_parser("require", help="make a person use a second factor everywhere")
    p.add_argument("username")
    p.add_argument("--off", action="store_true", help="lift the requirement again")
    p.set_defaults(func=cmd_mfa_require)


def describe_mfa(ctx: CliContext, user: User) -> dict[str, Any]:
    services = ctx.services
    status = services.mfa.status(user)
    return {
        "username": user.username,
        "required_by_admin": status.required,
        "totp": status.totp,
        "passkeys": [
            {"id": p.id, "name": p.name, "created_at": p.created_at, "last_used_at": p.last_used_at}
            for p in status.passkeys
        ],
        "recovery_codes_left": status.recovery_codes_left,
        "remembered_devices": len(services.remembered_devices.devices(user)),
    }


def cmd_mfa_show(args: argparse.Namespace, ctx: CliContext) -> int:
    info = describe_mfa(ctx, _require(ctx, args.username))
    if args.json:
        print_json(info)
        return 0
    for key, value in info.items():
        shown = ", ".join(p["name"] for p in value) if key == "passkeys" else value
        print(f"{key}: {shown}")
    return 0


def cmd_mfa_reset(args: argparse.Namespace, ctx: CliContext) -> int:
    user = _require(ctx, args.username)
    ctx.services.mfa.reset(user, actor=ADMIN)
    print(f"second factors and remembered browsers of {user.username} removed")
    return 0


def cmd_mfa_require(args: argparse.Namespace, ctx: CliContext) -> int:
    user = _require(ctx, args.username)
    ctx.services.mfa.apply_required(user, not args.off, actor=ADMIN)
    state = "no longer required" if args.off else "required"
    print(f"a second factor is {state} for {user.username}")
    return 0

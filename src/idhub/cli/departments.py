"""`idhub department add|move|set-manager|remove|list`: departments no source provides.

A department a source owns (LDAP, DingTalk, WeCom, SCIM) is refused with a line naming the
source: it is changed there, and the next sync would undo an edit made here
(core/directory/local_admin.py, docs/directory.md "Local departments and groups").
"""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.core.directory.local_admin import AdminDepartment
from idhub.errors import InvalidInput

ADMIN = Actor("admin", "cli")


def register(sub: Any) -> None:
    department = sub.add_parser("department", help="departments kept in idhub (not by a source)")
    dsub = department.add_subparsers(dest="department_command", metavar="ACTION", required=True)

    p = dsub.add_parser("add", help="add a local department; its parent must exist")
    p.add_argument("path", help="full path, e.g. /总部/财务部/费用核算组")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_add)

    p = dsub.add_parser("move", help="move a local department and everything below it")
    p.add_argument("path", help="the department to move")
    p.add_argument("parent", help='its new parent department, or "/" for the top of the tree')
    p.add_argument("--name", help="also rename it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_move)

    p = dsub.add_parser("set-manager", help="set (or --clear) a local department's manager")
    p.add_argument("path")
    p.add_argument("username", nargs="?", help="an enabled user, from any source")
    p.add_argument("--clear", action="store_true", help="remove the manager")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_set_manager)

    p = dsub.add_parser("remove", help="remove a local department with nobody in it")
    p.add_argument("path")
    p.set_defaults(func=cmd_remove)

    p = dsub.add_parser("list", help="every department, local or from a source")
    p.add_argument("--tree", action="store_true", help="draw the tree")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)


def describe(department: AdminDepartment, parents: dict[int, str]) -> dict[str, Any]:
    return {
        "path": department.path,
        "name": department.name,
        "parent": parents.get(department.parent_id) if department.parent_id else None,
        "source": department.source,
        "manager": department.manager,
        "users": department.users,
    }


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    added = ctx.services.local_departments.add(args.path, actor=ADMIN)
    if args.json:
        print_json(describe(ctx.services.local_departments.get(added.path), {}))
    else:
        print(f"added department {added.path}")
    return 0


def cmd_move(args: argparse.Namespace, ctx: CliContext) -> int:
    moved = ctx.services.local_departments.move(args.path, args.parent, name=args.name, actor=ADMIN)
    if args.json:
        print_json(
            {
                "before": moved.before,
                "after": moved.after,
                "departments": moved.departments,
                "users": moved.users,
            }
        )
    elif moved.departments == 0:
        print(f"{moved.before} is already there; nothing changed")
    else:
        print(
            f"moved {moved.before} to {moved.after} ({moved.departments} department(s) "
            f"re-pathed; {moved.users} user(s) moved with them)"
        )
        # Policies and assignments name departments by path; a move does not edit them.
        print("note: policies name departments by path: `idhub policy check` lists the old ones")
    return 0


def cmd_set_manager(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.clear == (args.username is not None):
        raise InvalidInput("give either a USERNAME or --clear")
    outcome = ctx.services.local_departments.set_manager(
        args.path, None if args.clear else args.username, actor=ADMIN
    )
    if args.json:
        print_json(
            {
                "path": outcome.path,
                "manager": outcome.after,
                "before": outcome.before,
                "changed": outcome.changed,
            }
        )
    elif not outcome.changed:
        who = outcome.after or "nobody"
        print(f"{outcome.path} is managed by {who} already; nothing changed")
    else:
        print(
            f"manager of {outcome.path}: {outcome.after or 'none'} (was {outcome.before or 'none'})"
        )
    return 0


def cmd_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    path = ctx.services.local_departments.remove(args.path, actor=ADMIN)
    print(f"removed department {path}")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    found = ctx.services.local_departments.all()
    parents = {d.id: d.path for d in found}
    if args.json:
        print_json([describe(d, parents) for d in found])
        return 0
    if args.tree:
        for d in found:
            notes = [d.source] if d.source != "local" else []
            if d.manager:
                notes.append(f"manager {d.manager}")
            if d.users:
                notes.append(f"{d.users} user(s)")
            extra = f"  ({', '.join(notes)})" if notes else ""
            print(f"{'  ' * (d.path.count('/') - 1)}{d.name}{extra}")
        return 0
    print_table(
        ["path", "source", "manager", "users"],
        [[d.path, d.source, d.manager or "", d.users] for d in found],
    )
    return 0

"""`idhub group add|add-member|remove-member|remove|list|show`: groups no source provides.

A local group may hold people from any source. A group a source owns is listed and shown, but
its members are the source's: changing them here is refused with a line naming the source.
"""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.core.directory.local_admin import AdminGroup, Person
from idhub.core.directory.local_groups import MembershipOutcome

ADMIN = Actor("admin", "cli")


def register(sub: Any) -> None:
    group = sub.add_parser("group", help="groups kept in idhub (not by a source)")
    gsub = group.add_subparsers(dest="group_command", metavar="ACTION", required=True)

    p = gsub.add_parser("add", help="add a local group")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_add)

    for action, verb in (("add-member", "add people to"), ("remove-member", "remove people from")):
        p = gsub.add_parser(action, help=f"{verb} a local group")
        p.add_argument("name")
        p.add_argument("usernames", nargs="+", metavar="USER")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=cmd_members, adding=action == "add-member")

    p = gsub.add_parser("remove", help="remove a local group (its memberships go with it)")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = gsub.add_parser("list", help="every group, local or from a source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = gsub.add_parser("show", help="one group and its members")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)


def describe(group: AdminGroup) -> dict[str, Any]:
    return {"name": group.name, "source": group.source, "members": group.members}


def describe_member(person: Person) -> dict[str, Any]:
    return {
        "username": person.username,
        "sub": person.sub,
        "source": person.source,
        "disabled": person.disabled,
    }


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    added = ctx.services.local_groups.add(args.name, actor=ADMIN)
    if args.json:
        print_json(describe(added))
    else:
        print(f"added group {added.name}")
    return 0


def cmd_members(args: argparse.Namespace, ctx: CliContext) -> int:
    groups = ctx.services.local_groups
    outcome: MembershipOutcome
    if args.adding:
        outcome = groups.add_members(args.name, args.usernames, actor=ADMIN)
    else:
        outcome = groups.remove_members(args.name, args.usernames, actor=ADMIN)
    if args.json:
        key = "added" if args.adding else "removed"
        print_json({"group": outcome.group, key: outcome.changed, "unchanged": outcome.unchanged})
        return 0
    if outcome.changed:
        verb = "added to" if args.adding else "removed from"
        print(f"{verb} {outcome.group}: {', '.join(outcome.changed)}")
    for username in outcome.unchanged:
        state = "already a member" if args.adding else "not a member"
        print(f"note: {username} is {state} of {outcome.group}; nothing changed for them")
    return 0


def cmd_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    name, members = ctx.services.local_groups.remove(args.name, actor=ADMIN)
    print(f"removed group {name} ({members} membership(s) ended)")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    found = ctx.services.local_groups.all()
    if args.json:
        print_json([describe(g) for g in found])
        return 0
    print_table(["name", "source", "members"], [[g.name, g.source, g.members] for g in found])
    return 0


def cmd_show(args: argparse.Namespace, ctx: CliContext) -> int:
    group, members = ctx.services.local_groups.show(args.name)
    if args.json:
        print_json({**describe(group), "members": [describe_member(p) for p in members]})
        return 0
    print(f"name: {group.name}")
    print(f"source: {group.source}")
    print(f"members: {len(members)}")
    if members:
        print_table(
            ["username", "source", "status"],
            [[p.username, p.source, "disabled" if p.disabled else "active"] for p in members],
        )
    return 0

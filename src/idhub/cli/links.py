"""`idhub sync conflicts`, `idhub user link USER SOURCE EXTERNAL_ID` and `idhub user unlink
USER SOURCE`: an admin's word on which source's person is which idhub user (docs/cli.md)."""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.errors import NotFound

ADMIN = Actor("admin", "cli")


def register_user_commands(user_sub: Any) -> None:
    p = user_sub.add_parser(
        "link", help="link a source's person (SOURCE EXTERNAL_ID) to an idhub user"
    )
    p.add_argument("username")
    p.add_argument("source", help='e.g. "ldap:corp", "dingtalk:corp", "scim:hr"')
    p.add_argument("external_id", help="the person's id in that source")
    p.set_defaults(func=cmd_link)

    p = user_sub.add_parser("unlink", help="drop a user's link to one source")
    p.add_argument("username")
    p.add_argument("source")
    p.set_defaults(func=cmd_unlink)


def register_sync_commands(sync_sub: Any) -> None:
    p = sync_sub.add_parser(
        "conflicts", help="people a sync left unlinked: their keys matched ambiguously"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_conflicts)


def _known_sources(ctx: CliContext) -> set[str]:
    settings = ctx.settings
    known = {"local", *settings.oa_sources}
    known |= {s.source for s in settings.ldap_sources.values()}
    known |= {s.source for s in settings.scim_sources.values()}
    return known


def cmd_link(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.source not in _known_sources(ctx):
        known = ", ".join(sorted(_known_sources(ctx)))
        raise NotFound(f"no source {args.source!r} is configured (configured: {known})")
    person = ctx.services.link_admin.link(args.username, args.source, args.external_id, actor=ADMIN)
    print(
        f"linked {person.username} to {args.source} {args.external_id.strip()} "
        f"({len(person.links)} link(s)); the next sync of {args.source} updates the user"
    )
    return 0


def cmd_unlink(args: argparse.Namespace, ctx: CliContext) -> int:
    person = ctx.services.link_admin.unlink(args.username, args.source, actor=ADMIN)
    print(f"unlinked {person.username} from {args.source} ({len(person.links)} link(s) left)")
    return 0


def cmd_conflicts(args: argparse.Namespace, ctx: CliContext) -> int:
    found = ctx.services.link_admin.conflicts()
    if args.json:
        print_json(found)
        return 0
    if not found:
        print("no open identity conflicts")
        return 0
    print_table(
        ["source", "external id", "username", "key", "candidates", "reason"],
        [
            [
                row["source"],
                row["external_id"],
                row["username"] or "",
                row["key"],
                ", ".join(row["candidate_users"]),
                row["reason"],
            ]
            for row in found
        ],
    )
    print("resolve with: idhub user link USER SOURCE EXTERNAL_ID")
    return 0

"""`idhub scim token NAME`: a new bearer token for a SCIM source, and the `idhub.toml` lines
that let it in (only the token's SHA-256 digest is configured, never the token)."""

from __future__ import annotations

import argparse
import re
import secrets
from typing import Any

from idhub.cli._context import CliContext
from idhub.core.scim.service import token_digest
from idhub.errors import InvalidInput


def register(sub: Any) -> None:
    scim = sub.add_parser("scim", help="SCIM 2.0 provisioning sources")
    scim_sub = scim.add_subparsers(dest="scim_command", metavar="ACTION", required=True)
    p = scim_sub.add_parser(
        "token", help="make a bearer token for a SCIM source and print its idhub.toml lines"
    )
    p.add_argument("name", help="the source's name ([directory.scim.NAME])")
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace, ctx: CliContext) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", args.name):
        raise InvalidInput("a SCIM source name may use letters, digits, _ and - only (at most 50)")
    token = secrets.token_urlsafe(32)
    print(f"# give this token to the provisioning client of {args.name!r}; it is shown once:")
    print(f"#   {token}")
    print(f"[directory.scim.{args.name}]")
    print(f'token_sha256 = "{token_digest(token)}"')
    return 0

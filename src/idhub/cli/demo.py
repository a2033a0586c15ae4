"""`idhub demo`: seeds the demo company (`idhub.demo`) after the steps `idhub init` runs."""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="seed the demo directory and the demo clients oa/reimburse")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.settings.require_secret_key()
    services = ctx.services
    services.migrate()
    # Signing keys and anything else `idhub init` sets up must exist before clients use them.
    for step in services.init_steps:
        step(print)
    for step in services.demo_steps:
        step(print)
    return 0

"""The `idhub` command. Each command group lives in its own module with a `register(sub)`
function; this module is the only place that calls `sys.exit`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from idhub import __version__
from idhub.errors import IdhubError

# Modules exposing `register(subparsers)`; each adds one command or command group.
COMMAND_MODULES = (
    "idhub.cli.setup",
    "idhub.cli.policy",
    "idhub.cli.client",
    "idhub.cli.keys",
    "idhub.cli.users",
    "idhub.cli.throttle",
    "idhub.cli.sessions",
    "idhub.cli.demo",
    "idhub.cli.audit",
    "idhub.cli.directory",
    "idhub.cli.cas",
    "idhub.cli.saml",
    "idhub.cli.backup",
)

EXIT_ERROR = 2
EXIT_FAILED_CHECK = 1


class CliParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"idhub: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="idhub", description="idhub single sign-on and permission hub")
    parser.add_argument("--version", action="version", version=f"idhub {__version__}")
    parser.add_argument("-c", "--config", help="path to idhub.toml (default: ./idhub.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(EXIT_ERROR)
    from idhub.cli._context import CliContext

    ctx = CliContext(config_path=args.config)
    try:
        code = args.func(args, ctx)
    except IdhubError as exc:
        print(f"idhub: error: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        print("idhub: interrupted", file=sys.stderr)
        code = 130
    finally:
        ctx.close()
    sys.exit(code or 0)

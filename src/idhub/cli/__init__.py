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
    "idhub.cli.scim",
    "idhub.cli.departments",
    "idhub.cli.groups",
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
    configure_logging(verbose=args.verbose, server=getattr(args, "server_logs", False))
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(EXIT_ERROR)
    from idhub.cli._context import CliContext
    from idhub.cli._endings import ending_for, silence_stdout

    ctx = CliContext(config_path=args.config)
    try:
        code = args.func(args, ctx)
        # Inside the try: a reader that went away (`| head`) shows up on this flush.
        sys.stdout.flush()
    except BaseException as exc:  # every ending is one line and an exit code, whatever failed
        if isinstance(exc, SystemExit):  # pragma: no cover - nothing below exits
            raise
        ending = ending_for(exc, database=ctx.database_label(), verbose=args.verbose)
        if isinstance(exc, BrokenPipeError):
            silence_stdout()
        if ending.line is not None:
            print(f"idhub: {ending.line}", file=sys.stderr)
        code = ending.code
    finally:
        ctx.close()
    sys.exit(code or 0)


def configure_logging(*, verbose: bool, server: bool) -> None:
    """A server logs what it does; a command says what happened in its own output and its
    one-line error, so library and internal log lines (httpx requests, the policy service's
    reload report) stay off its stderr unless `-v` asks for them."""
    if verbose or server:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        return
    root = logging.getLogger()
    if not root.handlers:
        # A handler that drops everything, so logging's last-resort handler (which prints
        # warnings and errors to stderr when no handler exists) stays unused.
        root.addHandler(logging.NullHandler())

"""`idhub init`, `idhub serve`, `idhub migrate` and `idhub config check`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from idhub.cli._context import CliContext
from idhub.cli._output import print_json
from idhub.config import describe, require_production_ready
from idhub.core.crypto import new_secret_key


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create ./var, the secret key, the database and signing keys")
    p.add_argument("--demo", action="store_true", help="also seed the demo directory and clients")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", help="serve the provider over HTTP")
    p.add_argument("--host", help="bind address (default from settings)")
    p.add_argument("--port", type=int, help="port (default from settings)")
    p.add_argument("--workers", type=int, help="worker processes (default from settings)")
    p.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations first (a migration job did; see docs/deployment.md)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="console lines or one JSON object a line (default from [server] log_format)",
    )
    p.set_defaults(func=cmd_serve, server_logs=True)

    config = sub.add_parser("config", help="inspect settings")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    p = config_sub.add_parser("check", help="validate settings and print the effective values")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config_check)


def ensure_secret_key(ctx: CliContext) -> bool:
    """Creates the secret key file (mode 0600) unless a key is configured. True if created."""
    settings = ctx.settings
    if settings.secret_key is not None:
        return False
    path = settings.secret_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(new_secret_key() + "\n")
    # Settings are frozen; reload so the new key is seen.
    del ctx.settings
    return True


def cmd_init(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.settings.var_dir.mkdir(parents=True, exist_ok=True)
    if ensure_secret_key(ctx):
        print(f"created secret key {ctx.settings.secret_key_file}")
    services = ctx.services
    services.migrate()
    print("database schema is current")
    for step in services.init_steps:
        step(print)
    if args.demo:
        for step in services.demo_steps:
            step(print)
    return 0


def cmd_migrate(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.services.migrate()
    print("database schema is current")
    return 0


def cmd_config_check(args: argparse.Namespace, ctx: CliContext) -> int:
    settings = ctx.settings
    if args.json:
        print_json(describe(settings))
    else:
        source = settings.config_file or "(no config file; defaults and environment)"
        print(f"config: {source}")
        _print_tree(describe(settings))
    if settings.secret_key is None:
        print("warning: no secret key yet; `idhub init` creates one", flush=True)
    return 0


def _print_tree(value: dict[str, Any], indent: str = "") -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{indent}{key}:")
            _print_tree(item, indent + "  ")
        else:
            print(f"{indent}{key} = {item}")


def cmd_serve(args: argparse.Namespace, ctx: CliContext) -> int:
    from idhub.web import http_server

    if args.log_format:
        # Through the environment, so worker processes (which rebuild settings) agree.
        os.environ["IDHUB_LOG_FORMAT"] = args.log_format
        ctx.__dict__.pop("settings", None)
    settings = ctx.settings
    require_production_ready(settings)
    settings.require_secret_key()
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    workers = args.workers or settings.server.workers
    log_format = settings.server.log_format
    # Before migrating and starting anything: a port in use is one line naming it.
    sock = http_server.listen_socket(host, port)
    if not args.no_migrate:
        ctx.services.migrate()
    config: http_server.IdhubServerConfig | None = None
    if workers > 1:
        # Worker processes rebuild settings from the same file and environment.
        if settings.config_file is not None:
            os.environ["IDHUB_CONFIG"] = str(settings.config_file.resolve())
        if settings.metrics.enabled:
            from idhub.cli._metrics_dir import fresh_metrics_dir

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(settings.var_dir))
    else:
        from idhub.web.app import create_app

        # As with several workers: uvicorn would otherwise believe X-Forwarded-For from
        # loopback by itself; idhub's middleware decides, from `[server] trusted_proxies`.
        config = http_server.server_config(
            create_app(ctx.services),
            limits=settings.limits,
            host=host,
            port=port,
            proxy_headers=False,
            log_format=log_format,
        )
    for line in serve_banner(settings.server.issuer, host=host, port=port, workers=workers):
        if log_format == "json":
            from idhub.web.log_format import json_line

            line = json_line("idhub.cli", line)
        print(line)
    sys.stdout.flush()
    if workers > 1:
        # The supervisor only starts and watches workers: it becomes a lean process of its
        # own (web/supervisor.py) on the same socket, instead of keeping all of idhub loaded.
        from idhub.web import supervisor

        sock.set_inheritable(True)
        sys.stderr.flush()
        os.execv(  # noqa: S606 - our own interpreter and module, no shell involved
            sys.executable,
            [
                sys.executable,
                "-m",
                "idhub.web.supervisor",
                *supervisor.command(sock.fileno(), workers=workers, log_format=log_format),
            ],
        )
    assert config is not None
    http_server.run(config, sock)
    return 0


def serve_banner(issuer: str, *, host: str, port: int, workers: int) -> list[str]:
    """What `idhub serve` prints once: where it listens (once), and what to open next."""
    shown_host = f"[{host}]" if ":" in host else host
    listening = f"http://{shown_host}:{port}"
    plural = "worker" if workers == 1 else "workers"
    base = issuer.rstrip("/")
    if base == listening:
        lines = [f"idhub listening on {listening} ({workers} {plural}); Ctrl-C stops it"]
    else:
        lines = [
            f"idhub listening on {listening} as {issuer} ({workers} {plural}); Ctrl-C stops it"
        ]
    parts = urlsplit(base)
    if parts.hostname in ("127.0.0.1", "localhost", "::1") and (parts.port or 80) != port:
        lines.append(
            f"note: the issuer names port {parts.port or 80}, idhub listens on {port}: "
            f"browsers will be sent to the issuer; set IDHUB_ISSUER={listening} to match"
        )
    lines += [
        f"  sign in:    {base}/login",
        f"  discovery:  {base}/.well-known/openid-configuration",
        "  next:       `make demo` (in a source checkout) runs the example OA and "
        "reimbursement systems signed in through this idhub",
    ]
    return lines

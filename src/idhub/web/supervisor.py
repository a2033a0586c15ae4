"""The process that supervises `idhub serve --workers N`, kept lean on purpose.

uvicorn starts each worker with multiprocessing's `spawn`: a fresh interpreter that imports
the application and builds its own services. The process that parsed the command line,
migrated the database and bound the socket has by then imported all of idhub (about 70 MB)
that it never serves with; `idhub serve` therefore replaces itself (`os.execv`, same pid,
same socket) with this module, which imports only the server and the settings it needs.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

from idhub.config import load_settings
from idhub.web import http_server


def command(fd: int, *, workers: int, log_format: str) -> list[str]:
    """The arguments after `python -m idhub.web.supervisor`."""
    return ["--fd", str(fd), "--workers", str(workers), "--log-format", log_format]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idhub-supervisor")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    # The workers load the same settings (file and environment); here only the limits.
    settings = load_settings()
    sock = socket.socket(fileno=args.fd)
    host, port = sock.getsockname()[:2]
    config = http_server.server_config(
        "idhub.web.asgi:create",
        factory=True,
        limits=settings.limits,
        host=host,
        port=port,
        workers=args.workers,
        log_level="warning",
        proxy_headers=False,
        log_format=args.log_format,
    )
    http_server.run(config, sock)


if __name__ == "__main__":
    main()

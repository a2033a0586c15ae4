"""Runs the two example systems (examples/oa, examples/reimburse) next to a live idhub for the
tests: the demo directory, both systems registered as clients on free ports, each served by a
real uvicorn with its own SQLite file."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from examples.oa.app import Oa
from examples.reimburse.app import Reimburse
from examples.shared.settings import SystemSettings

from idhub.demo import CLIENTS, USERS, register_demo_client, seed_demo_directory
from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer, free_port, serve_asgi

PASSWORDS = {person.username: person.password for person in USERS}


@dataclass
class Examples:
    idhub: LiveServer
    oa: Oa
    reimburse: Reimburse
    oa_url: str
    reimburse_url: str
    secrets: dict[str, str]


@contextlib.contextmanager
def running_examples(server: LiveServer, tmp_path: Path, known: KnownSecrets) -> Iterator[Examples]:
    services = server.services
    services.keys.ensure_active(lambda _line: None)
    seed_demo_directory(services, lambda _line: None)
    services.authz.refresh_directory()  # roles follow the new directory at once, not later
    known.add(*PASSWORDS.values())
    ports = {"oa": free_port(), "reimburse": free_port()}
    bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    client_secrets = {}
    for demo in CLIENTS:
        client_secrets[demo.client_id] = register_demo_client(
            services, demo, base=bases[demo.client_id]
        )
    known.add(*client_secrets.values())

    def settings(client_id: str, peer: str, peer_name: str) -> SystemSettings:
        return SystemSettings(
            issuer=server.url,
            client_id=client_id,
            client_secret=client_secrets[client_id],
            base_url=bases[client_id],
            database=tmp_path / f"{client_id}.db",
            session_key=secrets.token_urlsafe(32),
            peer_url=bases[peer],
            peer_name=peer_name,
        )

    oa = Oa(settings("oa", "reimburse", "费用报销 Reimbursement"))
    reimburse = Reimburse(settings("reimburse", "oa", "OA 办公"))
    with (
        serve_asgi(oa.app(), ports["oa"]) as oa_url,
        serve_asgi(reimburse.app(), ports["reimburse"]) as reimburse_url,
    ):
        yield Examples(server, oa, reimburse, oa_url, reimburse_url, client_secrets)

"""Where a system finds idhub and itself: a frozen value built by `from_env` or by tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SystemSettings:
    issuer: str
    client_id: str
    client_secret: str
    # Where this system is served; its redirect and logout URIs hang below it.
    base_url: str
    database: Path
    # Signs the session cookie. A new one per start signs everybody out of this system only.
    session_key: str
    # The other example system, for the link in the page header.
    peer_url: str = ""
    peer_name: str = ""

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    @classmethod
    def from_env(
        cls,
        prefix: str,
        *,
        client_id: str,
        port: int,
        peer: tuple[str, str],
        env: Mapping[str, str] | None = None,
    ) -> SystemSettings:
        """`<PREFIX>_CLIENT_SECRET` is required; `IDHUB_ISSUER`, `<PREFIX>_URL`,
        `<PREFIX>_DATABASE` and `<PREFIX>_PEER_URL` have local defaults."""
        values = os.environ if env is None else env
        secret = values.get(f"{prefix}_CLIENT_SECRET", "")
        if not secret:
            raise SystemExit(
                f"{prefix}_CLIENT_SECRET is not set: the secret `idhub client rotate-secret "
                f"{client_id}` prints (`make demo` sets it for you)"
            )
        base = values.get(f"{prefix}_URL", f"http://127.0.0.1:{port}")
        return cls(
            issuer=values.get("IDHUB_ISSUER", "http://127.0.0.1:8000"),
            client_id=client_id,
            client_secret=secret,
            base_url=base.rstrip("/"),
            database=Path(values.get(f"{prefix}_DATABASE", f"var/examples/{client_id}.db")),
            session_key=values.get(f"{prefix}_SESSION_KEY") or secrets.token_urlsafe(32),
            peer_url=values.get(f"{prefix}_PEER_URL", peer[0]),
            peer_name=peer[1],
        )
